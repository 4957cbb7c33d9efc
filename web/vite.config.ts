// Vite builds the app into dist/ as static files; JSX is compiled for Preact without a plugin.
import { defineConfig } from "vite";

export default defineConfig({
  oxc: {
    jsx: { runtime: "automatic", importSource: "preact" },
  },
  build: {
    target: "es2022",
    sourcemap: true,
  },
  server: { host: "127.0.0.1" },
  preview: { host: "127.0.0.1" },
});
