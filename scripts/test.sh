#!/usr/bin/env bash
# The one test command: formatting, lints, every feature alone, every test of the
# workspace against real redis-server processes, doctests and the docs.
#
#   scripts/test.sh
#
# Tests start their own redis-server processes on free loopback ports; set REDIS_URL to
# run the shared-server tests against a server of your own instead.
#
#   LATEST_DEPS=1 scripts/test.sh
#
# also builds and lints the workspace against the newest versions of its dependencies that
# Cargo.toml allows (a scratch copy with a fresh lockfile), so that a deprecation or break
# in a new upstream release shows here before a user's fresh lockfile meets it. Not part of
# CI: an upstream release must not turn CI red by itself.
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

# The gateway README's walkthrough test runs its curl lines in bash.
ensure_curl() {
    if ! command -v curl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        step "installing curl with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq curl >/dev/null
    fi
    if ! command -v curl >/dev/null 2>&1; then
        echo "error: curl is not installed (Debian/Ubuntu: 'sudo apt-get install curl')." >&2
        exit 1
    fi
}

# The gateway's browser tests (examples/fabric-gateway/tests/browser.rs) drive a headless
# Chromium; CHROMIUM may name another Chromium or Chrome executable.
ensure_chromium() {
    if [ -n "${CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then
        return
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        step "installing chromium with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq chromium >/dev/null
    fi
    if ! command -v chromium >/dev/null 2>&1; then
        echo "error: chromium is not installed and could not be installed here." >&2
        echo "Install it (Debian: 'sudo apt-get install chromium'; elsewhere install Chromium" >&2
        echo "or Chrome and set CHROMIUM to its executable) and run scripts/test.sh again." >&2
        exit 1
    fi
}

# The gateway's metrics test (examples/fabric-gateway/tests/prometheus.rs) scrapes it with
# a real Prometheus.
ensure_prometheus() {
    if command -v prometheus >/dev/null 2>&1; then
        return
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        step "installing prometheus with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Only the server: its recommends (node exporter, smartmontools...) are not needed.
        apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    fi
    if ! command -v prometheus >/dev/null 2>&1; then
        echo "error: prometheus is not installed and could not be installed here." >&2
        echo "Install it (Debian: 'sudo apt-get install prometheus'; elsewhere put the" >&2
        echo "prometheus binary from prometheus.io on PATH) and run scripts/test.sh again." >&2
        exit 1
    fi
}

ensure_redis
ensure_curl
ensure_chromium
ensure_prometheus
echo "redis-server: $(redis-server --version)"
echo "chromium: $("${CHROMIUM:-chromium}" --version 2>/dev/null | head -n 1)"
echo "prometheus: $(prometheus --version 2>&1 | head -n 1)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy (all targets, all features, warnings denied)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "each feature compiles alone"
cargo check -q -p tower-rampart --no-default-features
for feature in correlation-id cookie-policy session rate-limit redis axum tonic opentelemetry full; do
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

step "package: what a user downloads (cargo package)"
# --allow-dirty: a developer's uncommitted work is packaged as it is; CI's clone is clean.
errors=$(mktemp)
if ! listing=$(cargo package -p tower-rampart --list --allow-dirty 2>"$errors"); then
    cat "$errors" >&2
    exit 1
fi
rm -f "$errors"
for needed in Cargo.toml README.md CHANGELOG.md LICENSE-MIT LICENSE-APACHE src/lib.rs; do
    if ! grep -qx "$needed" <<<"$listing"; then
        echo "error: the package lacks $needed" >&2
        exit 1
    fi
done
if unwanted=$(grep -E '^(\.ci/|\.config/|scripts/|tests/|benches/|examples/|\.env|\.docker)|\.(pem|key|crt)$' <<<"$listing"); then
    echo "error: the package would ship files a user does not need:" >&2
    echo "$unwanted" >&2
    exit 1
fi
# Builds the packaged sources on their own, as a user's build would.
if ! output=$(cargo package -p tower-rampart --allow-dirty 2>&1); then
    echo "$output" >&2
    exit 1
fi
echo "  $(wc -l <<<"$listing") files"

if [ "${LATEST_DEPS:-0}" = 1 ]; then
    step "newest compatible dependencies (LATEST_DEPS=1)"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    # The working tree as it is (uncommitted changes included), without build output.
    tar --exclude=./target --exclude=./.git -cf - . | tar -xf - -C "$scratch"
    (
        cd "$scratch"
        export CARGO_TARGET_DIR="$OLDPWD/target/latest-deps"
        echo "  versions that moved:"
        cargo update 2>&1 | grep -E '^ *(Updating|Adding|Removing) [a-z]' | grep -v ' index$' || true
        cargo clippy --workspace --all-targets --all-features -q -- -D warnings
        RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps -q
        cargo test --workspace --all-features --no-run -q
    )
fi

step "all checks passed"
