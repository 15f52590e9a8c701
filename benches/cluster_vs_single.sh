#!/usr/bin/env bash
# The Redis limiter on one server and on a 3-master Redis Cluster, in the same run.
#
#   benches/cluster_vs_single.sh [rounds] [seconds]     (defaults: 2 rounds of 5 s each)
#
# Starts a plain redis-server and a 3-master cluster (no replicas) on loopback ports below
# 55536 (their bus ports, +10000, must be free too), builds limiter_bench in release mode,
# and runs it against each, interleaved, for GCRA and the window meaning, batching on and
# off: 64 callers, 100 000 client keys. limiter_bench prints decisions/s, the script calls
# and Redis CPU per decision (INFO commandstats usec of the scripts), per master on the
# cluster, and the share of the keys each master holds. Everything is stopped at the end.
set -euo pipefail
rounds=${1:-2}
secs=${2:-5}
base=${BENCH_PORT_BASE:-42100}
dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

start() { # port [extra args...]
    local port=$1
    shift
    mkdir -p "$dir/$port"
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$dir/$port" --logfile "$dir/$port/log" "$@" &
    pids+=($!)
}

single=$base
start "$single"
nodes=()
for i in 1 2 3; do
    port=$((base + i))
    start "$port" --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf"
    nodes+=("127.0.0.1:$port")
done
for port in "$single" $((base + 1)) $((base + 2)) $((base + 3)); do
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
until redis-cli -p $((base + 1)) cluster info | grep -q cluster_state:ok; do sleep 0.1; done

bin=${CARGO_TARGET_DIR:-target}/release/examples/limiter_bench
cargo build --release --all-features --example limiter_bench
for round in $(seq "$rounds"); do
    for meaning in gcra window; do
        for batching in on off; do
            for target in single cluster; do
                if [ "$target" = single ]; then port=$single; else port=$((base + 1)); fi
                echo "=== round $round | $target | $meaning | batching $batching"
                "$bin" --backend redis --redis-url "redis://127.0.0.1:$port" \
                    --meaning "$meaning" --batching "$batching" --concurrency 64 \
                    --keys 100000 --duration "${secs}s"
            done
        done
    done
done
