#!/usr/bin/env bash
# The TypeScript SDK's tests (client-js/), run from a fresh clone after the Rust workspace was built:
# installs the locked npm dependencies, builds the package, and runs its tests (the golden vectors,
# the storages, and sessions against a real ternd). Exits non-zero when anything fails.
#
# The tests start the ternd at $TERND_BIN, by default the debug build in the Cargo target directory.
set -euo pipefail
cd "$(dirname "$0")/../client-js"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "ci: installing nodejs and npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "ci: client-js needs Node.js 20 or later, found $(node --version)" >&2
  exit 1
fi

export TERND_BIN="${TERND_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tern/target}/debug/ternd}"
if [ ! -x "$TERND_BIN" ]; then
  echo "ci: no ternd at $TERND_BIN; build the workspace first (cargo build -p tern-server)" >&2
  exit 1
fi

echo "ci: client-js: npm ci"
npm ci --no-audit --no-fund
echo "ci: client-js: npm run build"
npm run build
echo "ci: client-js: npm test (ternd: $TERND_BIN)"
npm test
