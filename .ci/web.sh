#!/usr/bin/env bash
# The web app's checks, on a fresh clone: `bash .ci/web.sh` (from .ci/run, after the Rust workspace
# is built). It installs Debian's Chromium when it is missing, builds the TypeScript SDK (client-js)
# and the web app (web), and runs the app's unit tests and its browser tests, which drive Chromium
# through playwright-core against a real ternd. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# Chromium drives the browser tests; the emoji font makes the screenshots show emoji, not boxes.
missing=()
[ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] || missing+=(chromium)
dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || missing+=(fonts-noto-color-emoji)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ci(web): installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern/target}"
export TERND_BIN="${TERND_BIN:-$CARGO_TARGET_DIR/debug/ternd}"
if [ ! -x "$TERND_BIN" ]; then
  echo "ci(web): no ternd at $TERND_BIN: build the workspace first (cargo build -p ternd)" >&2
  exit 1
fi

echo "ci(web): client-js: npm ci, npm run build"
(cd client-js && npm ci --no-audit --no-fund && npm run build)

echo "ci(web): web: npm ci, npm run build"
(cd web && npm ci --no-audit --no-fund && npm run build)

echo "ci(web): web unit tests"
(cd web && npm test)

echo "ci(web): web browser tests (Chromium, ternd at $TERND_BIN)"
(cd web && npm run test:browser)
