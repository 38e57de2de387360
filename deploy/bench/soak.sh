#!/usr/bin/env bash
# go tool task bench-soak: memory of `sshca serve` under a long closed-loop run. Serve runs as
# production runs it (lib.sh's set-up, shared with serve.sh: TLS, redis-server with AOF
# everysec, keyring, HMAC audit chain, default rate limits); `sshca bench` drives it at
# CONCURRENCY in flight for DURATION, its tokens minted before the window and streamed from a
# file (a long run: see `sshca bench --help`). Every INTERVAL seconds of the window it samples
# serve's RSS (VmRSS, /proc/PID/status), its Go heap in use (go_memstats_heap_inuse_bytes from
# the diagnostics listener's /metrics), redis-server's RSS and its used_memory (INFO memory),
# and prints a progress line. The summary: per series, the mean of the first and of the last
# minute, the maximum, and the least-squares slope in MB/min over the whole window and over
# its second half; then the certificates issued and the bench's figures line.
#
# redis-server's memory is not serve's: it holds the inventory (a record per certificate until
# the certificate expires, bench asks for 5-minute certificates), the token ledger (a record
# per token until the token's exp) and the audit stream, so it grows with the certificates
# issued until the oldest records expire. serve's RSS should level off once its heap has
# reached its working size.
#
# Environment (all optional): DURATION (10m), CONCURRENCY (32), INTERVAL (10, seconds),
# TOKENS (default: 1.3 × the certs/s of a 10 s calibration run at CONCURRENCY × the window,
# so that the window does not run out of tokens), OUT, ALG, CA, SSHCA as for serve.sh. GOGC
# and GOMEMLIMIT, when set, apply to serve as to any Go process.
NAME=bench-soak
DURATION=${DURATION:-10m}
CONCURRENCY=${CONCURRENCY:-32}
INTERVAL=${INTERVAL:-10}
TOKENS=${TOKENS:-}
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# seconds D: a duration such as 90s, 10m or 1h in seconds.
seconds() {
	case $1 in
	*h) echo $((${1%h} * 3600)) ;;
	*m) echo $((${1%m} * 60)) ;;
	*s) echo "${1%s}" ;;
	*) die "DURATION=$1: give seconds, minutes or hours, such as 30s, 10m or 1h" ;;
	esac
}
window=$(seconds "$DURATION")
[ "$window" -gt 0 ] 2>/dev/null || die "DURATION=$DURATION: must be positive"

start_serve
echo "$NAME: DURATION=$DURATION CONCURRENCY=$CONCURRENCY INTERVAL=${INTERVAL}s GOGC=${GOGC:-unset} GOMEMLIMIT=${GOMEMLIMIT:-unset}; serve pid $serve_pid, redis-server pid $redis_pid; output in $OUT"

if [ -z "$TOKENS" ]; then
	echo "$NAME: calibration, 10 s at $CONCURRENCY in flight: $(run_bench calibration --duration 10s --concurrency "$CONCURRENCY")"
	TOKENS=$(awk -v r="$(field "$OUT/calibration.txt" certs/s)" -v w="$window" 'BEGIN {printf "%d", 1.3 * r * w + 1000}')
fi
echo "$NAME: minting $TOKENS tokens (the window starts when they are all minted)"

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; } # kB
# metric NAME: a sample of serve's /metrics (diagnostics listener), as an integer.
metric() { curl -fsS "http://127.0.0.1:$gport/metrics" 2>/dev/null | awk -v n="$1" '$1 == n {printf "%.0f", $2}'; }
heap() { metric go_memstats_heap_inuse_bytes; }
redisused() { redis-cli -p "$rport" info memory 2>/dev/null | awk -F: '/^used_memory:/ {printf "%.0f", $2}'; }

run_bench soak --duration "$DURATION" --concurrency "$CONCURRENCY" --tokens "$TOKENS" >/dev/null &
bench_pid=$!
pids+=("$bench_pid")
for _ in $(seq 36000); do # minting takes minutes for a long window
	grep -q '^bench: minted' "$OUT/soak.txt" 2>/dev/null && break
	kill -0 "$bench_pid" 2>/dev/null || break
	sleep 0.1
done
grep '^bench: minted' "$OUT/soak.txt" || die "bench did not start its window: $(cat "$OUT/soak.txt" "$OUT/soak.err")"

# samples: t(s) serve_rss(kB) serve_heap_inuse(B) redis_rss(kB) redis_used(B) requests(so far)
samples=$OUT/soak.samples
: >"$samples"
t0=$(date +%s)
alloc0=$(metric go_memstats_alloc_bytes_total)
gc0=$(metric go_gc_duration_seconds_count)
reqs0=$(grep -a '^bench: .* requests ' "$OUT/soak.err" | tail -n 1 | awk '{print $3}')
k=0
while kill -0 "$bench_pid" 2>/dev/null; do
	t=$(($(date +%s) - t0))
	[ "$t" -le "$window" ] || break # after the window bench verifies certificates: serve idles
	if [ "$t" -ge $((window - INTERVAL)) ]; then # the last sample: what Redis holds, and serve's collector
		redis-cli -p "$rport" info keyspace | tr -d '\r' | grep '^db0' >"$OUT/soak.keyspace"
		echo "$(redis-cli -p "$rport" xlen "sshca:{audit}:log") $(redis-cli -p "$rport" memory usage "sshca:{audit}:log" samples 100)" >"$OUT/soak.audit"
		echo "$(metric go_memstats_alloc_bytes_total) $(metric go_gc_duration_seconds_count) $(metric go_memstats_next_gc_bytes) $t" >"$OUT/soak.gc"
	fi
	reqs=$(grep -a '^bench: .* requests ' "$OUT/soak.err" | tail -n 1 | awk '{print $3}')
	line="$t $(rss "$serve_pid") $(heap) $(rss "$redis_pid") $(redisused) ${reqs:-0}"
	echo "$line" >>"$samples"
	echo "$line" | awk -v w="$window" '{printf "  %4ds/%ds  serve RSS %.1f MB, heap in use %.1f MB  redis-server RSS %.1f MB, used_memory %.1f MB  requests %d\n", $1, w, $2/1024, $3/1048576, $4/1024, $5/1048576, $6}'
	k=$((k + 1))
	while kill -0 "$bench_pid" 2>/dev/null && [ "$(date +%s)" -lt $((t0 + k * INTERVAL)) ]; do sleep 0.2; done
done
wait "$bench_pid"
rc=$?

# series COLUMN LABEL SCALE: first-minute and last-minute means, max, least-squares slope
# (MB/min) over the whole window and over its second half.
series() {
	awk -v c="$1" -v label="$2" -v scale="$3" '
		{ t[NR] = $1; v[NR] = $c / scale; n = NR; if (v[NR] > mx) mx = v[NR]; end = $1 }
		function slope(from,   i, k, sx, sy, sxx, sxy, x) {
			for (i = 1; i <= n; i++) if (t[i] >= from) { x = t[i] / 60; k++; sx += x; sy += v[i]; sxx += x * x; sxy += x * v[i] }
			if (k < 2 || k * sxx == sx * sx) return "n/a"
			return sprintf("%+.2f", (k * sxy - sx * sy) / (k * sxx - sx * sx))
		}
		END {
			for (i = 1; i <= n; i++) { if (t[i] <= 60) { f += v[i]; fn++ } if (t[i] >= end - 60) { l += v[i]; ln++ } }
			printf "  %-28s first minute %7.1f MB  last minute %7.1f MB  max %7.1f MB  slope %s MB/min (second half %s)\n",
				label, fn ? f / fn : 0, ln ? l / ln : 0, mx, slope(0), slope(end / 2)
		}' "$samples"
}
echo "$NAME summary ($DURATION at $CONCURRENCY in flight, a sample every ${INTERVAL}s, GOGC=${GOGC:-unset} GOMEMLIMIT=${GOMEMLIMIT:-unset}):"
series 2 "serve RSS" 1024
series 3 "serve Go heap in use" 1048576
series 4 "redis-server RSS" 1024
series 5 "redis-server used_memory" 1048576
if [ -s "$OUT/soak.gc" ]; then
	# What serve allocated per request and how often it collected, over the window; the live
	# heap is the collector's goal over 1 + GOGC/100.
	read -r alloc1 gc1 nextgc t1 <"$OUT/soak.gc"
	reqs1=$(awk -v t="$t1" '$1 <= t {r = $6} END {print r + 0}' "$samples")
	awk -v a="$((alloc1 - alloc0))" -v g="$((gc1 - gc0))" -v r="$((reqs1 - ${reqs0:-0}))" -v t="$t1" -v n="$nextgc" \
		'BEGIN {printf "  serve, garbage collector: %.1f KB allocated per request, %.1f collections/s, heap goal at the end %.1f MB\n", r ? a / r / 1024 : 0, t ? g / t : 0, n / 1048576}'
fi
if [ -s "$OUT/soak.audit" ]; then
	read -r xlen xmem <"$OUT/soak.audit"
	echo "  redis-server at the end: $(cat "$OUT/soak.keyspace"); the audit stream $xlen entries, $(awk -v m="$xmem" 'BEGIN {printf "%.1f MB", m / 1048576}') (kept until sshca audit archive trims it), the rest mostly keys that expire (inventory records and serials with their certificate, spent tokens with their token)"
fi
grep -E '^bench: [0-9]+ requests in|^bench: errors by kind|^bench: warning|^bench: first|^bench: invalid' "$OUT/soak.txt" | sed 's/^/  /'
echo "  $(tail -n 1 "$OUT/soak.txt")"
exit "$rc"
