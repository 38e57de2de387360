# shellcheck shell=bash
# Sourced by serve.sh and soak.sh: starts `sshca serve` as production runs it, on this machine:
# TLS on the listener, a real redis-server (append-only file, fsync every second), the keyring
# on, the audit log chained with an HMAC key, the embedded policy, the default rate limits, a
# diagnostics listener with pprof, and tokens from a `sshca dev` issuer (ES256 or RS256) that
# serve trusts like any OIDC provider.
#
# Before sourcing: NAME (the prefix of messages). Environment read: ALG, CA, TLS, OUT, SSHCA
# (see serve.sh). After start_serve: S (the sshca binary), dir (scratch), OUT, serve_pid,
# redis_pid, sport (serve's port: TLS, or plain HTTP with TLS=0), gport (its diagnostics port),
# dport (the issuer's port); run_bench NAME ARGS... runs one `sshca bench` against it.
# Everything started is stopped on exit.
set -u
ALG=${ALG:-ES256}
CA=${CA:-softkms}
TLS=${TLS:-1}
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
die() { echo "$NAME: $*" >&2; exit 1; }

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
# field FILE KEY: the number after "KEY:" on the last line of FILE.
field() { tail -n 1 "$1" | awk -v k="$2: " '{i = index($0, k); if (i) {split(substr($0, i + length(k)), a, " "); print a[1]}}'; }
# stats: median [min..max] of the numbers on stdin.
stats() {
	sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit}; m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%g [%g..%g]", m, v[1], v[NR]}'
}
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print 0; exit}; print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }

start_serve() {
	case $TLS in 0 | 1) ;; *) die "TLS=$TLS: use 1 (TLS on the listener, the default) or 0 (plain HTTP)" ;; esac
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
	cat >"$dir/state/config.yaml" <<EOC
listen: 127.0.0.1:$sport
$(if [ "$TLS" = 1 ]; then printf 'tls:\n  cert_file: %s\n  key_file: %s\n' "$dir/state/tls.crt" "$dir/state/tls.key"; fi)
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
EOC
	"$S" serve --config "$dir/state/config.yaml" >"$OUT/serve.log" 2>&1 &
	serve_pid=$!
	pids+=("$serve_pid")
	waitfor "$OUT/serve.log" '"sshca serving"' "sshca serve"
	for _ in $(seq 100); do
		curl -fsS "http://127.0.0.1:$gport/readyz" >/dev/null 2>&1 && break
		sleep 0.1
	done
}

# aof_rewrites prints how many AOF rewrites redis-server has started since it started (INFO
# persistence). A rewrite forks a child that serialises the whole dataset on one core for a
# while, so on this machine's two shared cores a run whose window holds one has a worse tail:
# run_bench says so on its line (docs/performance.md, "The open-loop tail and Redis's AOF
# rewrite").
aof_rewrites() {
	redis-cli -p "$rport" INFO persistence | tr -d '\r' | awk -F: '$1 == "aof_rewrites" {print $2}'
}

# run_bench NAME ARGS...: one `sshca bench` run against serve (measuring the CPU of serve and
# redis-server); its output goes to $OUT/NAME.txt and NAME.err; prints its last line, and after
# it the AOF rewrites redis-server started during the run (also kept in $OUT/NAME.aof) and the
# p99 of serve's own "took" over the run's requests (NAME.took).
run_bench() {
	local name=$1 before after lines
	shift
	before=$(aof_rewrites)
	lines=$(wc -l <"$OUT/serve.log")
	local target=(--server "https://127.0.0.1:$sport" --tls-ca "$dir/state/tls.crt")
	[ "$TLS" = 1 ] || target=(--server "http://127.0.0.1:$sport") # HTTP/1.1: no h2c
	"$S" bench "${target[@]}" --token-url "http://127.0.0.1:$dport/dev/token" \
		--state "$dir/dev" --server-pid "$serve_pid,$redis_pid" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
	after=$(aof_rewrites)
	echo "$((${after:-0} - ${before:-0}))" >"$OUT/$name.aof"
	# serve's own view of the same requests: the p99 of its "issue" lines' took (from the
	# request's decoding to its answer, without TLS, HTTP/2 framing or the generator), kept
	# in $OUT/NAME.took: what the client's p99 adds is the network stack and the generator.
	tail -n +"$((lines + 1))" "$OUT/serve.log" | grep '"msg":"issue"' | sed -n 's/.*"took":\([0-9]*\).*/\1/p' |
		sort -n | awk '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit}; i=int(NR*0.99); if (i<NR*0.99) i++; if (i<1) i=1; printf "%.2f\n", v[i]/1e6}' >"$OUT/$name.took"
	echo "$(tail -n 1 "$OUT/$name.txt")  aof_rewrites: $((${after:-0} - ${before:-0}))  serve_p99_ms: $(cat "$OUT/$name.took")"
}
