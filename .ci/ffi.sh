#!/usr/bin/env bash
# The native SDKs' checks (client-ffi/), run on a fresh clone after the Rust workspace was built
# and tested by .ci/run (`cargo test --workspace`, same CARGO_TARGET_DIR, `dev` profile):
#
#   1. builds libtern_ffi and the uniffi-bindgen binary (`cargo build -p tern-ffi`, dev profile);
#   2. regenerates the Swift sources and fails if they differ from the checked-in ones;
#   3. builds the Python wheel with maturin (dev profile too), installs it into a virtualenv and
#      runs the pytest suite against a real ternd;
#   4. runs the Kotlin module's JUnit tests (`mvn -B test`), which generate the Kotlin bindings
#      from the same library.
#
# It installs what a fresh machine lacks: a JDK and Maven from Debian, maturin and pytest from
# PyPI. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern/target}"
export CARGO_TERM_COLOR=never
lib_dir="$CARGO_TARGET_DIR/debug"
export TERND_BIN="${TERND_BIN:-$lib_dir/ternd}"

missing=()
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ffi: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "ffi: cargo build -p tern-ffi (dev profile)"
cargo build -p tern-ffi --locked
if [ ! -x "$TERND_BIN" ]; then
  echo "ffi: $TERND_BIN is missing; building ternd"
  cargo build -p tern-server --bin ternd --locked
fi

generate() { # language, out-dir
  # From the crate's directory, so the generator finds client-ffi/uniffi.toml.
  (cd "$root/client-ffi" && "$lib_dir/uniffi-bindgen" generate --library "$lib_dir/libtern_ffi.so" \
    --language "$1" --no-format --out-dir "$2" >/dev/null)
}

echo "ffi: checking that the Swift sources are current"
swift_out="$(mktemp -d)"
trap 'rm -rf "$swift_out"' EXIT
generate swift "$swift_out"
cp "$swift_out/Tern.swift" client-ffi/swift/Sources/Tern/Tern.swift
cp "$swift_out/TernFFI.h" client-ffi/swift/Headers/TernFFI.h
cp "$swift_out/TernFFI.modulemap" client-ffi/swift/Headers/module.modulemap
if ! git diff --exit-code --stat -- client-ffi/swift \
  || [ -n "$(git status --porcelain --untracked-files=all -- client-ffi/swift)" ]; then
  echo "ffi: the checked-in Swift bindings differ from what the generator makes now;" >&2
  echo "ffi: they are regenerated in place now: commit client-ffi/swift" >&2
  exit 1
fi

echo "ffi: the Python wheel (maturin) and its tests"
venv="$CARGO_TARGET_DIR/ffi-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check maturin pytest
# The maturin just installed builds the wheel (no isolated build environment to fill again); the
# build backend runs it by name, so the virtualenv's bin directory goes first on PATH.
PATH="$venv/bin:$PATH" "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation \
  --force-reinstall --no-deps ./client-ffi/python
# From the repository root, so `import tern` finds the installed package, not the source tree.
"$venv/bin/pytest" -q client-ffi/python/tests

echo "ffi: the Kotlin module and its tests"
mvn -B -ntp -f client-ffi/kotlin/pom.xml test -Dtern.ffi.dir="$lib_dir"
