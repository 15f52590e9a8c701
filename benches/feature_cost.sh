#!/usr/bin/env bash
# What compiling in the `opentelemetry` feature costs an application that installs no
# provider: the same layer stack (benches/feature-cost) built without and with the feature,
# run in alternation (PAIRS times each, default 8), each run printing its median ns per
# request for the stack and for a bare handler. Prints every run, then the median of the
# per-pair ratios (with / without) for the stack and for the bare handler (the noise floor).
#
#   bash benches/feature_cost.sh
#
# Builds two release binaries of benches/feature-cost (a few minutes cold), then about
# 2 s a run.
set -euo pipefail
cd "$(dirname "$0")/.."
pairs="${PAIRS:-8}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

target="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p feature-cost
cp "$target/release/feature-cost" "$out/without"
cargo build --release -q -p feature-cost --features opentelemetry
cp "$target/release/feature-cost" "$out/with"

echo "run  without: stack bare (ns/request)   with: stack bare (ns/request)"
ratios_stack=()
ratios_bare=()
for i in $(seq 1 "$pairs"); do
  # Alternate which build goes first, so that a drift in the machine's load favours neither.
  if (( i % 2 )); then
    a="$("$out/without")"; b="$("$out/with")"
  else
    b="$("$out/with")"; a="$("$out/without")"
  fi
  sa="${a#stack_ns=}"; sa="${sa%% *}"; ba="${a##*bare_ns=}"
  sb="${b#stack_ns=}"; sb="${sb%% *}"; bb="${b##*bare_ns=}"
  echo "$i    $sa $ba    $sb $bb"
  ratios_stack+=("$(awk -v x="$sb" -v y="$sa" 'BEGIN { printf "%.4f", x / y }')")
  ratios_bare+=("$(awk -v x="$bb" -v y="$ba" 'BEGIN { printf "%.4f", x / y }')")
done
med() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
range() { printf '%s\n' "$@" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
echo "time per request, with the feature / without (1.0 = no cost; > 1 slower):"
echo "  stack: median $(med "${ratios_stack[@]}")  range $(range "${ratios_stack[@]}")"
echo "  bare handler (noise floor): median $(med "${ratios_bare[@]}")  range $(range "${ratios_bare[@]}")"
