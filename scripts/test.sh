#!/usr/bin/env bash
# The test command (README.md): every crate's unit, integration, property and
# process tests. Pass extra nextest arguments through, e.g. `-p tollgate-raft`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo build --locked --workspace --bins
cargo nextest run --locked --workspace --no-fail-fast "$@"
