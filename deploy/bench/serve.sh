#!/usr/bin/env bash
# Load-tests `sshca serve` as production runs it, on this machine: TLS on the listener, a real
# redis-server (append-only file, fsync every second), the keyring on, the audit log chained
# with an HMAC key, the embedded policy, the default rate limits, tokens from a `sshca dev`
# issuer (ES256 or RS256) that serve trusts like any OIDC provider. `sshca bench` drives it and
# measures the CPU of serve and redis-server. Run through `go tool task bench-serve-tls`
# (docs/performance.md says which figure each variable setting reproduces).
#
# Environment (all optional):
#   ALG=ES256|RS256      the issuer's token signature (default ES256)
#   CA=softkms|pkcs11    the user CA key: an Ed25519 key file, or an ECDSA P-256 key in a
#                        SoftHSM2 token through PKCS#11 (default softkms)
#   RUNS=5               runs per load shape (the figures are medians with min and max)
#   DURATION=10s         measured window of each run
#   SHAPES="8 32 open"   closed loop at these concurrencies, then "open": open loop at half
#                        the peak (the best median of the closed-loop shapes); "rN" is open
#                        loop at N requests a second (SHAPES="32 r200 r500 r1000": latency by
#                        offered load, docs/performance.md)
#   TLS=0                serve listens on plain HTTP (HTTP/1.1 on loopback: the issue's first
#                        row), not TLS
#   HTTP1=1              the generator speaks HTTP/1.1 (sshca bench --http1), as one-shot
#                        clients such as sshca login do, rather than HTTP/2
#   PROFILE=1            a CPU profile of serve (pprof) during the middle run at the last
#                        concurrency, written to $OUT/serve.pprof with its top list, and
#                        one of the generator (sshca bench) over the same run, $OUT/bench.pprof
#   OUT=DIR              where every run's output goes (default: a new temporary directory)
#   SSHCA=FILE           a sshca binary to measure instead of building this checkout (to
#                        compare two versions run after run: docs/performance.md)
# The set-up is lib.sh's (shared with soak.sh). The last lines are the summary: per shape,
# median [min..max] of certs/s, p50, p99 and the server CPU per certificate (serve +
# redis-server), and serve's own share.
NAME=bench-serve-tls
RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
SHAPES=${SHAPES:-8 32 open}
PROFILE=${PROFILE:-1}
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
start_serve

echo "bench-serve-tls: ALG=$ALG CA=$CA TLS=$TLS RUNS=$RUNS DURATION=$DURATION; serve pid $serve_pid, redis-server pid $redis_pid; output in $OUT"
# serveshare FILE: serve's own CPU per certificate.
serveshare() { grep 'by process' "$1" | sed -n "s/.*$serve_pid ([^)]*): \([0-9.]*\).*/\1/p"; }

summary=()
peak=0
mid=$(((RUNS + 1) / 2))
last_closed=""
for shape in $SHAPES; do case $shape in open | r[0-9]*) ;; *) last_closed=$shape ;; esac; done
proto=()
[ "${HTTP1:-0}" = 1 ] && proto=(--http1)
for shape in $SHAPES; do
	if [ "$shape" = open ]; then
		rate=$(awk -v p="$peak" 'BEGIN {printf "%d", p/2}')
		[ "$rate" -gt 0 ] || die "open loop needs a closed-loop shape before it (its peak)"
		args=(--rate "$rate")
		label="open loop at $rate/s (half the peak)"
	elif [[ $shape =~ ^r([0-9]+)$ ]]; then
		args=(--rate "${BASH_REMATCH[1]}")
		label="open loop at ${BASH_REMATCH[1]}/s"
	else
		args=(--concurrency "$shape")
		label="closed loop, concurrency $shape"
	fi
	for i in $(seq "$RUNS"); do
		name="$shape-$i"
		prof=()
		if [ "$PROFILE" = 1 ] && [ "$shape" = "$last_closed" ] && [ "$i" = "$mid" ]; then
			prof=(--pprof-url "http://127.0.0.1:$gport/debug/pprof/profile" --pprof-out "$OUT/serve.pprof" --self-pprof-out "$OUT/bench.pprof")
		fi
		echo "  $label, run $i: $(run_bench "$name" --duration "$DURATION" "${args[@]}" "${proto[@]}" "${prof[@]}")"
	done
	files=()
	for i in $(seq "$RUNS"); do files+=("$OUT/$shape-$i.txt"); done
	cps=$(for f in "${files[@]}"; do field "$f" certs/s; done | stats)
	p50=$(for f in "${files[@]}"; do field "$f" p50; done | stats)
	p99=$(for f in "${files[@]}"; do field "$f" p99; done | stats)
	cpu=$(for f in "${files[@]}"; do field "$f" server_cpu_us_per_cert; done | stats)
	own=$(for f in "${files[@]}"; do serveshare "$f"; done | stats)
	errs=$(for f in "${files[@]}"; do field "$f" errors; done | awk '{s+=$1} END {print s+0}')
	rewrites=$(for i in $(seq "$RUNS"); do cat "$OUT/$shape-$i.aof"; done | awk '$1 > 0 {n++} END {print n+0}')
	took=$(for i in $(seq "$RUNS"); do cat "$OUT/$shape-$i.took"; done | grep -v n/a | stats)
	summary+=("$label: certs/s $cps  p50 ms $p50  p99 ms $p99 (serve's own took $took)  server CPU us/cert $cpu (serve alone $own)  errors $errs  runs with an AOF rewrite $rewrites of $RUNS")
	if [[ ! $shape =~ ^(open|r[0-9]+)$ ]]; then
		m=$(for f in "${files[@]}"; do field "$f" certs/s; done | median)
		peak=$(awk -v a="$peak" -v b="$m" 'BEGIN {print (b > a) ? b : a}')
	fi
done
if [ -f "$OUT/serve.pprof" ]; then
	go tool pprof -top -nodecount 40 "$dir/sshca" "$OUT/serve.pprof" >"$OUT/serve.top" 2>/dev/null
	echo "bench-serve-tls: CPU profile of serve: $OUT/serve.pprof (top: $OUT/serve.top; go tool pprof -top $dir/sshca $OUT/serve.pprof)"
	# Per stage, and the cryptography's share of serve's CPU.
	bash "$(dirname "$0")/stages.sh" "$dir/sshca" "$OUT/serve.pprof" | tee "$OUT/serve.stages"
	cp "$dir/sshca" "$OUT/sshca" # the binary the profile's symbols come from
fi
echo "bench-serve-tls summary (ALG=$ALG CA=$CA TLS=$TLS, median [min..max] of $RUNS runs of $DURATION):"
for l in "${summary[@]}"; do echo "  $l"; done
