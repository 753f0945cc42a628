#!/usr/bin/env bash
# Source this file (`. scripts/env.sh`) before cargo commands.
#
# RocksDB's C++ is ~90% of a cold build on a small machine (about 10 minutes on
# 2 cores). We compile it once per machine into a cache keyed by the
# librocksdb-sys version in Cargo.lock, then link that static library in every
# build via ROCKSDB_LIB_DIR + ROCKSDB_STATIC; a cold build then takes ~2 minutes.
# The bindings are still generated from the crate's bundled headers, so the
# cache key must be the exact crate version.

_tollgate_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_rocks_version="$(awk '/^name = "librocksdb-sys"$/ {getline; gsub(/version = |"/, ""); print; exit}' "$_tollgate_root/Cargo.lock")"
TOLLGATE_CACHE="${TOLLGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate}"
ROCKSDB_CACHE_DIR="$TOLLGATE_CACHE/librocksdb-$_rocks_version"

tollgate_build_rocksdb_cache() {
    if [ -f "$ROCKSDB_CACHE_DIR/librocksdb.a" ]; then
        return 0
    fi
    echo "building librocksdb $_rocks_version once for this machine (takes ~10 minutes on 2 cores)..." >&2
    local build_dir="$TOLLGATE_CACHE/rocksdb-build"
    (cd "$_tollgate_root" && env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC \
        CARGO_TARGET_DIR="$build_dir" cargo build --release --locked -p librocksdb-sys) || return 1
    local lib
    lib="$(ls -t "$build_dir"/release/build/librocksdb-sys-*/out/librocksdb.a | head -n 1)"
    mkdir -p "$ROCKSDB_CACHE_DIR"
    cp "$lib" "$ROCKSDB_CACHE_DIR/librocksdb.a.tmp" && mv "$ROCKSDB_CACHE_DIR/librocksdb.a.tmp" "$ROCKSDB_CACHE_DIR/librocksdb.a"
    rm -rf "$build_dir"
}

if [ -f "$ROCKSDB_CACHE_DIR/librocksdb.a" ]; then
    export ROCKSDB_LIB_DIR="$ROCKSDB_CACHE_DIR"
    export ROCKSDB_STATIC=1
fi
