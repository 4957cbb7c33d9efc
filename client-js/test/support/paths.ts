/** Where the repository's files are, from a compiled test file. */

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root: the nearest folder above this file that holds `spec/vectors/`. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  // Bounded by the depth of the file system.
  for (let depth = 0; depth < 64; depth++) {
    if (existsSync(join(dir, "spec", "vectors", "manifest.json"))) {
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) {
      break;
    }
    dir = parent;
  }
  throw new Error("spec/vectors/manifest.json not found above the test files");
}
