#!/usr/bin/env bash
# One-time machine setup: the system packages the build needs, and the
# prebuilt RocksDB library (compiled once per machine, ~10 minutes on 2 cores;
# every later build then takes about two minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages, installed together when any is missing:
# - libclang-dev: librocksdb-sys generates its bindings with bindgen, which
#   needs libclang (the C library: libclang-cpp, which fresh images ship,
#   does not do);
# - chromium and chromium-driver: the console and portal are tested in a
#   real headless browser over WebDriver (node/tests/browser.rs).
. scripts/lib/libclang.sh
packages=()
if ! tollgate_find_libclang >/dev/null; then packages+=(libclang-dev); fi
if [ ! -x /usr/bin/chromium ]; then packages+=(chromium); fi
if [ ! -x /usr/bin/chromedriver ]; then packages+=(chromium-driver); fi
# - openssl and curl: the profile-guided build's training run
#   (loadtest/scenarios/pgo-training.sh, tested in node/tests/pgo_training.rs)
#   makes its TLS upstream's certificates and waits for readiness with them.
if ! command -v openssl >/dev/null 2>&1; then packages+=(openssl); fi
if ! command -v curl >/dev/null 2>&1; then packages+=(curl); fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "installing ${packages[*]}..." >&2
    sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "installing cargo-nextest..." >&2
    cargo install --locked cargo-nextest
fi

# The official OpenAI, Anthropic and Google SDKs for the AI gateway's
# compatibility tests (pinned in scripts/python-sdks.txt). Optional here:
# without them those tests skip themselves and say so (under CI, or with
# TOLLGATE_REQUIRE_SDKS=1, they fail instead).
if command -v python3 >/dev/null 2>&1 && ! python3 -c "import openai, anthropic, google.genai" 2>/dev/null; then
    echo "installing the Python SDKs of the AI gateway's compatibility tests..." >&2
    python3 -m pip install -q --disable-pip-version-check -r scripts/python-sdks.txt \
        || echo "note: could not install them (scripts/python-sdks.txt); those tests will be skipped" >&2
fi

. scripts/env.sh
tollgate_build_rocksdb_cache
