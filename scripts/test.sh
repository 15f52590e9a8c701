#!/usr/bin/env bash
# The one test command: formatting, lints, every feature alone, every test of the
# workspace against real redis-server processes, doctests and the docs.
#
#   scripts/test.sh
#
# Tests start their own redis-server processes on free loopback ports; set REDIS_URL to
# run the shared-server tests against a server of your own instead.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

ensure_redis() {
    if command -v redis-server >/dev/null 2>&1; then
        return
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        step "installing redis-server with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq redis-server >/dev/null
        # The Debian package may start a system service on 6379; tests never use it.
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "error: redis-server is not installed and could not be installed here." >&2
        echo "Install it (Debian/Ubuntu: 'sudo apt-get install redis-server'," >&2
        echo "macOS: 'brew install redis') and run scripts/test.sh again." >&2
        exit 1
    fi
}

ensure_redis
echo "redis-server: $(redis-server --version)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy (all targets, all features, warnings denied)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "each feature compiles alone"
cargo check -q -p tower-rampart --no-default-features
for feature in correlation-id cookie-policy session rate-limit redis axum tonic full; do
    echo "  --features $feature"
    cargo check -q -p tower-rampart --no-default-features --features "$feature"
done

step "tests (all features, real redis-server)"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-features --no-fail-fast
    step "doctests"
    cargo test --workspace --all-features --doc
else
    cargo test --workspace --all-features --no-fail-fast
fi

step "docs (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps -q

step "all checks passed"
