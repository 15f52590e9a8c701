#!/usr/bin/env bash
# HTTP benchmark of the layers: an axum "hello" handler bare, behind tower_governor, behind
# our rate limiter (memory, memory with a window quota, a denied flood, Redis), behind a
# naive one-EVALSHA-per-request Redis limiter, and behind all four layers; loaded with `wrk`
# on loopback in interleaved rounds, printed as medians and ratios against the baselines of
# the same run.
#
#   scripts/bench-http.sh
#
# About 3 minutes at the defaults once built (5 rounds of 15 runs of 2 s, plus a 1 s warm up
# of each variant). Settings, all optional:
#
#   ROUNDS=5          rounds; each runs every variant once, in a rotated order, between runs
#                     of bare (bare v1 bare v2 ... bare): ratios are against the bare runs
#                     on either side
#   DURATION=2        seconds of each `wrk` run
#   CONNECTIONS=64    wrk -c
#   WRK_THREADS=1     wrk -t
#   WARMUP=1          seconds of `wrk` per variant before the rounds (0: none)
#   VARIANTS="bare governor memory memory-window denied redis naive-redis full"
#                     (bare is always run: every ratio is against it). Three more variants,
#                     not run unless named, measure the ceilings of the limiter rows:
#                     floor-headers (bare plus memory's two RateLimit headers as constants),
#                     floor-429 (denied's refusal, byte for byte, from the handler)
#                     and floor-redis (bare plus one GET per request: the Redis row's)
#   BENCH_WORKERS     the servers' Tokio worker threads (default: one per core)
#   RESULTS=FILE      also write the raw per-round figures there (TSV)
#   SERVER=PATH       a bench_http executable built beforehand (e.g. from another commit, to
#                     compare two versions run after run) instead of building this tree's
#   NICE=-10          run wrk, the servers and redis-server under `nice -n NICE` (negative
#                     values need root): on a machine busy with other work, this keeps
#                     the measured processes from waiting behind it
#
# Needs cargo, curl, `wrk` (installed with apt-get when missing and allowed) and, for the
# Redis variants, `redis-server` (started here on a free loopback port, stopped at the end).
# Only 127.0.0.1 is used. Everything (load generator, servers, Redis) shares this machine's
# cores: read the ratios, not the absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-2}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
WARMUP=${WARMUP:-1}
NICE=${NICE:-}
VARIANTS=${VARIANTS:-bare governor memory memory-window denied redis naive-redis full}

step() { printf '\n==> %s\n' "$*"; }
die() {
    echo "error: $*" >&2
    exit 1
}

for n in ROUNDS DURATION CONNECTIONS WRK_THREADS WARMUP; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number (got '${!n}')"
done
run=()
if [ -n "$NICE" ]; then
    [[ $NICE =~ ^-?[0-9]+$ ]] || die "NICE must be a number (got '$NICE')"
    run=(nice -n "$NICE")
fi
((ROUNDS >= 1 && DURATION >= 1)) || die "ROUNDS and DURATION must be at least 1"

# bare first, each variant once.
variants=(bare)
for v in $VARIANTS; do
    case $v in
    bare) ;;
    governor | memory | memory-window | denied | redis | naive-redis | full | floor-headers | floor-429 | floor-redis)
        [[ " ${variants[*]} " == *" $v "* ]] || variants+=("$v")
        ;;
    *) die "unknown variant '$v'" ;;
    esac
done
needs_redis=0
for v in "${variants[@]}"; do
    [[ $v == redis || $v == naive-redis || $v == floor-redis ]] && needs_redis=1
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

# A loopback port for redis-server: below the usual ephemeral range (32768 and up), so that no
# outgoing connection holds it, and nobody listens on it (checked just before use).
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
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
# Waits for a bench_http server (port 0: the kernel's choice) to print its port.
server_port() { # variant, pid
    local p
    for _ in $(seq 200); do
        p=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$work/$1.log")
        [ -n "$p" ] && {
            echo "$p"
            return
        }
        kill -0 "$2" 2>/dev/null || die "bench_http $1 exited: $(cat "$work/$1.log")"
        sleep 0.05
    done
    die "bench_http $1 did not start in 10 s: $(cat "$work/$1.log")"
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
trap 'exit 130' INT TERM HUP PIPE

if [ -n "${SERVER:-}" ]; then
    server=$SERVER
    [ -x "$server" ] || die "SERVER=$server is not an executable"
    step "using $server (SERVER)"
else
    step "building examples/bench_http.rs (release)"
    cargo build --release --example bench_http --message-format=json-render-diagnostics >"$work/build.json"
    server=$(grep -o '"executable":"[^"]*bench_http[^"]*"' "$work/build.json" | tail -1 | cut -d'"' -f4)
    [ -x "$server" ] || die "could not find the built bench_http executable"
fi

if ((needs_redis)); then
    redis_port=$(free_port)
    "${run[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --logfile "$work/redis.log" &
    pids+=($!)
    redis_pid=$!
    wait_port "$redis_port" "$!" redis-server
    export REDIS_URL="redis://127.0.0.1:$redis_port/"
    echo "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$redis_port"
fi

declare -A port pid
for v in "${variants[@]}"; do
    "${run[@]}" "$server" "$v" 0 >"$work/$v.log" 2>&1 &
    pids+=($!)
    pid[$v]=$!
    port[$v]=$(server_port "$v" "$!")
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
    expected=200
    [ "$v" != floor-429 ] || expected=429
    [ "$status" = "$expected" ] || {
        echo "  error: $v answered $status to its first request" >&2
        check_failed=1
    }
done
((check_failed == 0)) || die "a variant is not serving as expected"

# Runs wrk against a variant; prints "requests/s total_requests non_2xx".
# CPU time (user + system, clock ticks) a process has used so far; 0 without /proc.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
# Runs wrk against a variant; prints "requests/s requests non_2xx server_cpu_us redis_cpu_us"
# (CPU time the variant's server and redis-server used during the run).
load() { # variant seconds
    local out s0 s1 r0=0 r1=0
    s0=$(ticks "${pid[$1]}")
    [ -z "${redis_pid:-}" ] || r0=$(ticks "$redis_pid")
    out=$("${run[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${2}s" "http://127.0.0.1:${port[$1]}/" 2>&1) ||
        die "wrk failed against $1: $out"
    s1=$(ticks "${pid[$1]}")
    [ -z "${redis_pid:-}" ] || r1=$(ticks "$redis_pid")
    awk -v scpu=$(((s1 - s0) * 1000000 / hz)) -v rcpu=$(((r1 - r0) * 1000000 / hz)) '
         /Requests\/sec:/ { rps = $2 }
         / requests in / { total = $1 }
         /Non-2xx or 3xx responses:/ { non = $NF }
         END { printf "%s %s %s %s %s\n", rps == "" ? "0" : rps, total == "" ? 0 : total, non == "" ? 0 : non, scpu, rcpu }' <<<"$out"
}

if ((WARMUP > 0)); then
    step "warming up each variant for ${WARMUP} s"
    for v in "${variants[@]}"; do
        load "$v" "$WARMUP" >/dev/null
    done
fi

# Each round runs every other variant once, in a rotated order, each between two runs of
# bare: bare v1 bare v2 bare ... bare. A variant's ratio in a round is its requests/s over
# the mean of the two bare runs around it, so that load from elsewhere on the machine, which
# drifts over seconds, moves both sides of each ratio alike.
others=("${variants[@]:1}")
m=${#others[@]}
((m > 0)) || die "nothing to compare with bare: VARIANTS names no other variant"
step "$ROUNDS rounds of: bare, then each of the $m other variants followed by bare; ${DURATION} s of wrk -t$WRK_THREADS -c$CONNECTIONS each (about $((ROUNDS * (2 * m + 1) * DURATION)) s)"
raw="$work/raw.tsv"
printf 'round\tvariant\trequests_per_s\trequests\tnon_2xx\tbare_around\tserver_cpu_us\tredis_cpu_us\tbare_cpu_us_per_request_around\n' >"$raw"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$raw"; }
per_request() { awk -v c="$1" -v n="$2" 'BEGIN { print (n > 0 ? c / n : 0) }'; }
for ((r = 1; r <= ROUNDS; r++)); do
    read -r prev total non scpu rcpu < <(load bare "$DURATION")
    prev_cpu=$(per_request "$scpu" "$total")
    record "$r" bare "$prev" "$total" "$non" "$prev" "$scpu" "$rcpu" "$prev_cpu"
    line="round $r: bare $(printf '%.0f' "$prev")"
    for ((i = 0; i < m; i++)); do
        v=${others[$(((i + r - 1) % m))]}
        read -r rps total non scpu rcpu < <(load "$v" "$DURATION")
        read -r next btotal bnon bscpu brcpu < <(load bare "$DURATION")
        next_cpu=$(per_request "$bscpu" "$btotal")
        record "$r" "$v" "$rps" "$total" "$non" "$(awk -v a="$prev" -v b="$next" 'BEGIN { print (a + b) / 2 }')" \
            "$scpu" "$rcpu" "$(awk -v a="$prev_cpu" -v b="$next_cpu" 'BEGIN { print (a + b) / 2 }')"
        record "$r" bare "$next" "$btotal" "$bnon" "$next" "$bscpu" "$brcpu" "$next_cpu"
        prev_cpu=$next_cpu
        line+=" $v $(printf '%.0f' "$rps") bare $(printf '%.0f' "$next")"
        prev=$next
    done
    echo "$line"
done
[ -z "${RESULTS:-}" ] || cp "$raw" "$RESULTS"

# Median and range of a list of numbers on stdin: "median min max".
stats() { sort -g | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%s %s %s\n", m, a[1], a[NR] }'; }
# requests/s of every run of a variant.
figures() { awk -F'\t' -v v="$1" 'NR > 1 && $2 == v { print $3 }' "$raw"; }
# A variant's ratio to the bare runs around it, one per round, in round order.
to_bare() { awk -F'\t' -v v="$1" 'NR > 1 && $2 == v && $6 > 0 { print $1 "\t" $3 / $6 }' "$raw" | sort -n | cut -f2; }
# Per-round ratios of a to b, each first taken against the bare runs around it.
ratio_stats() { paste <(to_bare "$1") <(to_bare "$2") | awk '$2 > 0 { print $1 / $2 }' | stats; }

step "results: requests/s (median and range of all runs); ratio to the bare runs around each run (median and range over $ROUNDS rounds)"
printf '%-14s %10s %21s %10s %19s\n' variant median range "vs bare" "vs bare, range"
for v in "${variants[@]}"; do
    read -r med lo hi < <(figures "$v" | stats)
    if [ "$v" = bare ]; then
        printf '%-14s %10.0f %10.0f-%-10.0f %9s\n' "$v" "$med" "$lo" "$hi" "1x"
        continue
    fi
    read -r rmed rlo rhi < <(to_bare "$v" | stats)
    printf '%-14s %10.0f %10.0f-%-10.0f %9.3fx %8.3fx-%.3fx\n' "$v" "$med" "$lo" "$hi" "$rmed" "$rlo" "$rhi"
done

# Server CPU per request (µs), all runs of a variant; Redis CPU per request likewise.
cpu_figures() { awk -F'\t' -v v="$1" -v col="$2" 'NR > 1 && $2 == v && $4 > 0 { print $col / $4 }' "$raw"; }
# Per round: the bare runs' CPU per request around a run over the run's (server alone):
# the throughput ratio to expect where the server's CPU is the limit.
cpu_to_bare() { awk -F'\t' -v v="$1" 'NR > 1 && $2 == v && $4 > 0 && $7 > 0 { print $1 "\t" $9 / ($7 / $4) }' "$raw" | sort -n | cut -f2; }
echo
echo "server CPU per request (user + system of the server process during each run; less"
echo "sensitive than requests/s to other work on the machine). bare/variant: the bare runs"
echo "around each run over the variant's, median and range over the rounds."
printf '%-14s %14s %19s %16s\n' variant "server µs/req" "bare/variant" "redis µs/req"
for v in "${variants[@]}"; do
    read -r cmed _ _ < <(cpu_figures "$v" 7 | stats)
    rcol=""
    if [[ $v == redis || $v == naive-redis || $v == floor-redis ]]; then
        read -r rmed _ _ < <(cpu_figures "$v" 8 | stats)
        rcol=$(printf '%.2f' "$rmed")
    fi
    if [ "$v" = bare ]; then
        printf '%-14s %14.2f %19s %16s\n' "$v" "$cmed" "1x" "$rcol"
    else
        read -r xmed xlo xhi < <(cpu_to_bare "$v" | stats)
        printf '%-14s %14.2f %8.3fx (%.2f-%.2f) %16s\n' "$v" "$cmed" "$xmed" "$xlo" "$xhi" "$rcol"
    fi
done

has() { [[ " ${variants[*]} " == *" $1 "* ]]; }
pair() { # label a b
    read -r rmed rlo rhi < <(ratio_stats "$2" "$3")
    printf '%-40s %.3fx (%.3fx-%.3fx)\n' "$1" "$rmed" "$rlo" "$rhi"
}
echo
has memory && has governor && pair "ours, memory / tower_governor" memory governor
has memory-window && has memory && pair "ours, memory window / memory GCRA" memory-window memory
has redis && has naive-redis && pair "ours, Redis / naive EVALSHA layer" redis naive-redis
has redis && has floor-redis && pair "ours, Redis / its round trip's floor" redis floor-redis
has memory && has floor-headers && pair "ours, memory / its headers' floor" memory floor-headers
has denied && has floor-429 && pair "ours, denied / the refusal's floor" denied floor-429
if has denied; then
    awk -F'\t' 'NR > 1 && $2 == "denied" { total += $4; non += $5 }
        END { printf "%-40s %d of %d responses non-2xx (%.4f%%)\n", "denied flood", non, total, total ? 100 * non / total : 0 }' "$raw"
fi
awk -F'\t' 'NR > 1 && $2 != "denied" && $2 != "floor-429" && $5 > 0 { printf "warning: %s answered %d non-2xx responses in round %d\n", $2, $5, $1 }' "$raw"
echo
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$WRK_THREADS -c$CONNECTIONS, ${DURATION} s per run${NICE:+, nice $NICE}"
