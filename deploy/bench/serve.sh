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
#                        the peak (the best median of the closed-loop shapes)
#   PROFILE=1            a CPU profile of serve (pprof) during the middle run at the last
#                        concurrency, written to $OUT/serve.pprof with its top list
#   OUT=DIR              where every run's output goes (default: a new temporary directory)
#   SSHCA=FILE           a sshca binary to measure instead of building this checkout (to
#                        compare two versions run after run: docs/performance.md)
# The last lines are the summary: per shape, median [min..max] of certs/s, p50, p99 and the
# server CPU per certificate (serve + redis-server), and serve's own share.
set -u
ALG=${ALG:-ES256}
CA=${CA:-softkms}
RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
SHAPES=${SHAPES:-8 32 open}
PROFILE=${PROFILE:-1}
dir=$(mktemp -d)
OUT=${OUT:-$dir/out}
mkdir -p "$OUT"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$dir/state" "$dir/dev" "$dir/hsm"
}
trap cleanup EXIT
die() { echo "bench-serve-tls: $*" >&2; exit 1; }

# freeport prints a loopback TCP port nobody listens on (several engineers share the machine).
freeport() {
	local p
	while :; do
		p=$((20000 + RANDOM % 30000))
		ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}
waitfor() { # waitfor FILE PATTERN what
	for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
	cat "$1" >&2
	die "$3 did not start"
}

if [ -n "${SSHCA:-}" ]; then
	cp "$SSHCA" "$dir/sshca" || die "SSHCA=$SSHCA: cannot copy it"
else
	go build -o "$dir/sshca" ./cmd/sshca || die "build failed"
fi
S=$dir/sshca
mkdir -p "$dir/state/keys" "$dir/dev"

rport=$(freeport)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$dir/state" --appendonly yes --appendfsync everysec \
	--save "" --maxmemory-policy noeviction >"$OUT/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
waitfor "$OUT/redis.log" "Ready to accept connections" redis-server

dport=$(freeport)
"$S" dev --listen "127.0.0.1:$dport" --state "$dir/dev" --token-algorithm "$ALG" >"$OUT/dev.log" 2>&1 &
pids+=($!)
waitfor "$OUT/dev.log" Ctrl-C "sshca dev (the token issuer)"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
	-addext subjectAltName=IP:127.0.0.1 -keyout "$dir/state/tls.key" -out "$dir/state/tls.crt" 2>/dev/null || die "openssl"
openssl genpkey -algorithm ed25519 -out "$dir/state/host_ca.pem" 2>/dev/null || die "openssl"
"$S" audit genkey --out "$dir/state/audit.key" >/dev/null || die "audit genkey"
case $CA in
softkms)
	openssl genpkey -algorithm ed25519 -out "$dir/state/user_ca.pem" 2>/dev/null || die "openssl"
	user_kms='softkms:'
	user_key="softkms:path=$dir/state/user_ca.pem"
	;;
pkcs11)
	mkdir -p "$dir/hsm/tokens"
	printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$dir/hsm" >"$dir/hsm/softhsm2.conf"
	export SOFTHSM2_CONF=$dir/hsm/softhsm2.conf
	softhsm2-util --init-token --free --label ssh-ca --so-pin 5678 --pin 1234 >/dev/null || die "softhsm2-util --init-token"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/hsm/user_ca.pem" 2>/dev/null || die "openssl"
	softhsm2-util --import "$dir/hsm/user_ca.pem" --token ssh-ca --label ssh-user-ca --id 7331 --pin 1234 >/dev/null ||
		die "softhsm2-util --import"
	user_kms="pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=ssh-ca?pin-value=1234"
	user_key='pkcs11:id=7331;object=ssh-user-ca'
	;;
*) die "CA=$CA: use softkms or pkcs11" ;;
esac

sport=$(freeport)
gport=$(freeport)
cat >"$dir/state/config.yaml" <<EOF
listen: 127.0.0.1:$sport
tls:
  cert_file: $dir/state/tls.crt
  key_file: $dir/state/tls.key
diag_listen: 127.0.0.1:$gport
diag_pprof: true
user_ca:
  kms: "$user_kms"
  key: "$user_key"
host_ca:
  kms: "softkms:"
  key: "softkms:path=$dir/state/host_ca.pem"
redis:
  addrs: ["127.0.0.1:$rport"]
oidc:
  issuers:
    - issuer_url: http://127.0.0.1:$dport/dev/oidc
      audiences: [sshca]
      allowed_email_domains: [example.com]
keyring:
  enabled: true
  kms: "softkms:"
  key_dir: $dir/state/keys
audit:
  key_file: $dir/state/audit.key
EOF
"$S" serve --config "$dir/state/config.yaml" >"$OUT/serve.log" 2>&1 &
serve_pid=$!
pids+=("$serve_pid")
waitfor "$OUT/serve.log" '"sshca serving"' "sshca serve"
for _ in $(seq 100); do
	curl -fsS "http://127.0.0.1:$gport/readyz" >/dev/null 2>&1 && break
	sleep 0.1
done

echo "bench-serve-tls: ALG=$ALG CA=$CA RUNS=$RUNS DURATION=$DURATION; serve pid $serve_pid, redis-server pid $redis_pid; output in $OUT"
# run NAME ARGS...: one bench run; its output goes to $OUT/NAME.txt.
run() {
	local name=$1
	shift
	"$S" bench --server "https://127.0.0.1:$sport" --tls-ca "$dir/state/tls.crt" --token-url "http://127.0.0.1:$dport/dev/token" \
		--state "$dir/dev" --server-pid "$serve_pid,$redis_pid" --duration "$DURATION" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
	tail -n 1 "$OUT/$name.txt"
}
# field FILE KEY: the number after "KEY:" on the last line of FILE.
field() { tail -n 1 "$1" | awk -v k="$2: " '{i = index($0, k); if (i) {split(substr($0, i + length(k)), a, " "); print a[1]}}'; }
# serveshare FILE: serve's own CPU per certificate.
serveshare() { grep 'by process' "$1" | sed -n "s/.*$serve_pid ([^)]*): \([0-9.]*\).*/\1/p"; }
# stats: median [min..max] of the numbers on stdin.
stats() {
	sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit}; m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%g [%g..%g]", m, v[1], v[NR]}'
}
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print 0; exit}; print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }

summary=()
peak=0
mid=$(((RUNS + 1) / 2))
last_closed=""
for shape in $SHAPES; do [ "$shape" != open ] && last_closed=$shape; done
for shape in $SHAPES; do
	if [ "$shape" = open ]; then
		rate=$(awk -v p="$peak" 'BEGIN {printf "%d", p/2}')
		[ "$rate" -gt 0 ] || die "open loop needs a closed-loop shape before it (its peak)"
		args=(--rate "$rate")
		label="open loop at $rate/s (half the peak)"
	else
		args=(--concurrency "$shape")
		label="closed loop, concurrency $shape"
	fi
	for i in $(seq "$RUNS"); do
		name="$shape-$i"
		prof=()
		if [ "$PROFILE" = 1 ] && [ "$shape" = "$last_closed" ] && [ "$i" = "$mid" ]; then
			prof=(--pprof-url "http://127.0.0.1:$gport/debug/pprof/profile" --pprof-out "$OUT/serve.pprof")
		fi
		echo "  $label, run $i: $(run "$name" "${args[@]}" "${prof[@]}")"
	done
	files=()
	for i in $(seq "$RUNS"); do files+=("$OUT/$shape-$i.txt"); done
	cps=$(for f in "${files[@]}"; do field "$f" certs/s; done | stats)
	p50=$(for f in "${files[@]}"; do field "$f" p50; done | stats)
	p99=$(for f in "${files[@]}"; do field "$f" p99; done | stats)
	cpu=$(for f in "${files[@]}"; do field "$f" server_cpu_us_per_cert; done | stats)
	own=$(for f in "${files[@]}"; do serveshare "$f"; done | stats)
	errs=$(for f in "${files[@]}"; do field "$f" errors; done | awk '{s+=$1} END {print s+0}')
	summary+=("$label: certs/s $cps  p50 ms $p50  p99 ms $p99  server CPU us/cert $cpu (serve alone $own)  errors $errs")
	if [ "$shape" != open ]; then
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
echo "bench-serve-tls summary (ALG=$ALG CA=$CA, median [min..max] of $RUNS runs of $DURATION):"
for l in "${summary[@]}"; do echo "  $l"; done
