#!/usr/bin/env bash
# HTTP benchmark of the layers: an axum "hello" handler bare, behind tower_governor, behind
# our rate limiter (memory, memory with a window quota, a denied flood, Redis), behind a
# naive one-EVALSHA-per-request Redis limiter, and behind all four layers; loaded with `wrk`
# on loopback in interleaved rounds, printed as medians and ratios against the baselines of
# the same run.
#
#   scripts/bench-http.sh
#
# About 3 minutes at the defaults once built (8 variants x 5 rounds x 3 s, plus a 1 s warm
# up of each). Settings, all optional:
#
#   ROUNDS=5          rounds; each round runs every variant once, in a rotated order
#   DURATION=3        seconds of `wrk` per variant and round
#   CONNECTIONS=64    wrk -c
#   WRK_THREADS=1     wrk -t
#   WARMUP=1          seconds of `wrk` per variant before the rounds (0: none)
#   VARIANTS="bare governor memory memory-window denied redis naive-redis full"
#                     (bare is always run: every ratio is against it)
#   BENCH_WORKERS     the servers' Tokio worker threads (default: one per core)
#   RESULTS=FILE      also write the raw per-round figures there (TSV)
#
# Needs cargo, curl, `wrk` (installed with apt-get when missing and allowed) and, for the
# Redis variants, `redis-server` (started here on a free loopback port, stopped at the end).
# Only 127.0.0.1 is used. Everything (load generator, servers, Redis) shares this machine's
# cores: read the ratios, not the absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
WARMUP=${WARMUP:-1}
VARIANTS=${VARIANTS:-bare governor memory memory-window denied redis naive-redis full}

step() { printf '\n==> %s\n' "$*"; }
die() {
    echo "error: $*" >&2
    exit 1
}

for n in ROUNDS DURATION CONNECTIONS WRK_THREADS WARMUP; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number (got '${!n}')"
done
((ROUNDS >= 1 && DURATION >= 1)) || die "ROUNDS and DURATION must be at least 1"

# bare first, each variant once.
variants=(bare)
for v in $VARIANTS; do
    case $v in
    bare) ;;
    governor | memory | memory-window | denied | redis | naive-redis | full)
        [[ " ${variants[*]} " == *" $v "* ]] || variants+=("$v")
        ;;
    *) die "unknown variant '$v'" ;;
    esac
done
needs_redis=0
for v in "${variants[@]}"; do
    [[ $v == redis || $v == naive-redis ]] && needs_redis=1
done

ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return
    if command -v apt-get >/dev/null 2>&1; then
        local sudo=()
        if [ "$(id -u)" != 0 ]; then
            command -v sudo >/dev/null 2>&1 || die "wrk is missing and sudo is not available: install wrk"
            sudo=(sudo)
        fi
        step "installing wrk with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get install -y -qq wrk >/dev/null ||
            { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq wrk >/dev/null; }
    fi
    command -v wrk >/dev/null 2>&1 ||
        die "wrk is not installed (Debian/Ubuntu: 'sudo apt-get install wrk', macOS: 'brew install wrk')"
}
ensure_wrk
command -v curl >/dev/null 2>&1 || die "curl is not installed"
if ((needs_redis)); then
    command -v redis-server >/dev/null 2>&1 ||
        die "redis-server is not installed (Debian/Ubuntu: 'sudo apt-get install redis-server'), or leave out the redis variants: VARIANTS='bare governor memory ...'"
fi

# A loopback port nobody listens on (checked just before use).
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 40000))
        port_in_use "$p" || {
            echo "$p"
            return
        }
    done
    die "no free loopback port found"
}
wait_port() { # port, pid, what
    for _ in $(seq 200); do
        port_in_use "$1" && return
        kill -0 "$2" 2>/dev/null || die "$3 exited before listening"
        sleep 0.05
    done
    die "$3 is not listening on 127.0.0.1:$1 after 10 s"
}

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "building examples/bench_http.rs (release)"
cargo build --release --example bench_http --message-format=json-render-diagnostics >"$work/build.json"
server=$(grep -o '"executable":"[^"]*bench_http[^"]*"' "$work/build.json" | tail -1 | cut -d'"' -f4)
[ -x "$server" ] || die "could not find the built bench_http executable"

if ((needs_redis)); then
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --logfile "$work/redis.log" &
    pids+=($!)
    wait_port "$redis_port" "$!" redis-server
    export REDIS_URL="redis://127.0.0.1:$redis_port/"
    echo "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$redis_port"
fi

declare -A port
for v in "${variants[@]}"; do
    port[$v]=$(free_port)
    "$server" "$v" "${port[$v]}" >"$work/$v.log" 2>&1 &
    pids+=($!)
    wait_port "${port[$v]}" "$!" "bench_http $v (see its log: $(cat "$work/$v.log" 2>/dev/null))"
done

step "one request to each variant"
check_failed=0
for v in "${variants[@]}"; do
    head=$(curl -s -o /dev/null -D - "http://127.0.0.1:${port[$v]}/" | tr -d '\r')
    status=$(head -1 <<<"$head" | cut -d' ' -f2)
    limits=$(grep -i '^\(x-\)\?ratelimit' <<<"$head" | tr '\n' ' ' || true)
    printf '%-14s %s  %s\n' "$v" "$status" "${limits:-(no rate-limit headers)}"
    case $v in
    memory | memory-window | denied | redis | full)
        grep -qi '^ratelimit-policy:' <<<"$head" && grep -qi '^ratelimit:' <<<"$head" || {
            echo "  error: $v answered without RateLimit-Policy and RateLimit headers" >&2
            check_failed=1
        }
        ;;
    esac
    [ "$status" = 200 ] || {
        echo "  error: $v answered $status to its first request" >&2
        check_failed=1
    }
done
((check_failed == 0)) || die "a variant is not serving as expected"

# Runs wrk against a variant; prints "requests/s total_requests non_2xx".
load() { # variant seconds
    local out
    out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${2}s" "http://127.0.0.1:${port[$1]}/" 2>&1) ||
        die "wrk failed against $1: $out"
    awk '/Requests\/sec:/ { rps = $2 }
         / requests in / { total = $1 }
         /Non-2xx or 3xx responses:/ { non = $NF }
         /Socket errors:/ { errors = $0 }
         END { printf "%s %s %s\n", rps == "" ? "0" : rps, total == "" ? 0 : total, non == "" ? 0 : non }' <<<"$out"
}

if ((WARMUP > 0)); then
    step "warming up each variant for ${WARMUP} s"
    for v in "${variants[@]}"; do
        load "$v" "$WARMUP" >/dev/null
    done
fi

n=${#variants[@]}
step "$ROUNDS rounds x $n variants x ${DURATION} s of wrk -t$WRK_THREADS -c$CONNECTIONS (about $((ROUNDS * n * DURATION)) s)"
raw="$work/raw.tsv"
printf 'round\tvariant\trequests_per_s\trequests\tnon_2xx\n' >"$raw"
for ((r = 1; r <= ROUNDS; r++)); do
    line="round $r:"
    for ((i = 0; i < n; i++)); do
        v=${variants[$(((i + r - 1) % n))]} # a rotated order each round
        read -r rps total non < <(load "$v" "$DURATION")
        printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$v" "$rps" "$total" "$non" >>"$raw"
        line+=" $v $(printf '%.0f' "$rps")"
    done
    echo "$line"
done
[ -z "${RESULTS:-}" ] || cp "$raw" "$RESULTS"

# Median and range of a list of numbers on stdin.
stats() { sort -g | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%s %s %s\n", m, a[1], a[NR] }'; }
# The figures of one variant, one per round in round order.
figures() { awk -F'\t' -v v="$1" 'NR > 1 && $2 == v { print $1 "\t" $3 }' "$raw" | sort -n | cut -f2; }
# Per-round ratios a/b (same round), as median and range: "median min max".
ratio_stats() { paste <(figures "$1") <(figures "$2") | awk '$2 > 0 { print $1 / $2 }' | stats; }

step "results: requests/s (median and range over $ROUNDS rounds), ratios of the same round"
printf '%-14s %10s %21s %10s %19s\n' variant median range "vs bare" "vs bare, range"
for v in "${variants[@]}"; do
    read -r med lo hi < <(figures "$v" | stats)
    read -r rmed rlo rhi < <(ratio_stats "$v" bare)
    printf '%-14s %10.0f %10.0f-%-10.0f %9.3fx %8.3fx-%.3fx\n' "$v" "$med" "$lo" "$hi" "$rmed" "$rlo" "$rhi"
done

has() { [[ " ${variants[*]} " == *" $1 "* ]]; }
pair() { # label a b
    read -r rmed rlo rhi < <(ratio_stats "$2" "$3")
    printf '%-40s %.3fx (%.3fx-%.3fx)\n' "$1" "$rmed" "$rlo" "$rhi"
}
echo
has governor && pair "tower_governor / bare" governor bare
has memory && has governor && pair "ours, memory / tower_governor" memory governor
has memory-window && has memory && pair "ours, memory window / memory GCRA" memory-window memory
has redis && has naive-redis && pair "ours, Redis / naive EVALSHA layer" redis naive-redis
has naive-redis && pair "naive EVALSHA layer / bare" naive-redis bare
if has denied; then
    awk -F'\t' 'NR > 1 && $2 == "denied" { total += $4; non += $5 }
        END { printf "%-40s %d of %d responses non-2xx (%.4f%%)\n", "denied flood", non, total, total ? 100 * non / total : 0 }' "$raw"
fi
awk -F'\t' 'NR > 1 && $2 != "denied" && $5 > 0 { printf "warning: %s answered %d non-2xx responses in round %d\n", $2, $5, $1 }' "$raw"
echo
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$WRK_THREADS -c$CONNECTIONS, ${DURATION} s per variant and round"
