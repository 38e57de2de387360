#!/usr/bin/env bash
# go tool task bench-cluster: issuance of one `sshca serve` (plain HTTP on loopback, HMAC audit
# chain) against one redis-server, then against a Redis Cluster of three masters, with
# `sshca bench` closed loop; RUNS runs of DURATION each, the median and [min..max] printed.
# server_cpu_us_per_cert sums serve and every redis-server. Not part of `go tool task test`.
# Variables: RUNS (5), DURATION (10s), CONCURRENCY (16).
set -u
RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-16}
dir=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	rm -rf "$dir"
}
trap cleanup EXIT
die() { echo "bench-cluster: $*" >&2; exit 1; }
freeport() { # a port whose cluster bus port (+10000) is free too
	local p
	while :; do
		p=$((20000 + RANDOM % 30000))
		ss -Hltn "sport = :$p" | grep -q . || ss -Hltn "sport = :$((p + 10000))" | grep -q . || { echo "$p"; return; }
	done
}
waitfor() { # waitfor FILE PATTERN what
	for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
	cat "$1" >&2
	die "$3 did not start"
}
median() { sort -g | awk '{v[NR]=$1} END {m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%g [%g..%g]", m, v[1], v[NR]}'; }
field() { tail -n 1 "$1" | awk -v k="$2: " '{i = index($0, k); if (i) {split(substr($0, i + length(k)), a, " "); print a[1]}}'; }

go build -o "$dir/sshca" ./cmd/sshca || die "build failed"
S=$dir/sshca
mkdir -p "$dir/dev"
dport=$(freeport)
"$S" dev --listen "127.0.0.1:$dport" --state "$dir/dev" >"$dir/dev.log" 2>&1 &
pids+=($!)
waitfor "$dir/dev.log" Ctrl-C "sshca dev (the token issuer)"
openssl genpkey -algorithm ed25519 -out "$dir/user_ca.pem" 2>/dev/null || die openssl
openssl genpkey -algorithm ed25519 -out "$dir/host_ca.pem" 2>/dev/null || die openssl
"$S" audit genkey --out "$dir/audit.key" >/dev/null || die "audit genkey"

# deployment NAME MASTERS: starts the Redis of the deployment, then serve on it, and benches.
deployment() {
	local name=$1 masters=$2 addrs="" rpids="" redis_line
	for i in $(seq "$masters"); do
		local port
		port=$(freeport)
		mkdir -p "$dir/$name-$i"
		local extra=()
		[ "$masters" -gt 1 ] && extra=(--cluster-enabled yes --cluster-config-file "$dir/$name-$i/nodes.conf")
		redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$name-$i" --appendonly yes --appendfsync everysec \
			--save "" --maxmemory-policy noeviction "${extra[@]}" >"$dir/$name-$i.log" 2>&1 &
		pids+=($!)
		rpids="$rpids,$!"
		waitfor "$dir/$name-$i.log" "Ready to accept connections" "redis-server $i"
		addrs="$addrs\"127.0.0.1:$port\", "
	done
	if [ "$masters" -gt 1 ]; then
		# shellcheck disable=SC2046
		redis-cli --cluster create $(echo "$addrs" | tr -d '",') --cluster-replicas 0 --cluster-yes >"$dir/$name-create.log" 2>&1 ||
			die "redis-cli --cluster create: $(cat "$dir/$name-create.log")"
		for _ in $(seq 100); do
			redis-cli -p "$(echo "$addrs" | tr -d '",' | cut -d: -f2 | cut -d' ' -f1)" cluster info | grep -q cluster_state:ok && break
			sleep 0.1
		done
		redis_line="redis: {addrs: [${addrs%, }], cluster_mode: true}"
	else
		redis_line="redis: {addrs: [${addrs%, }]}"
	fi
	local sport
	sport=$(freeport)
	cat >"$dir/$name.yaml" <<EOF
listen: 127.0.0.1:$sport
user_ca: {kms: "softkms:", key: "softkms:path=$dir/user_ca.pem"}
host_ca: {kms: "softkms:", key: "softkms:path=$dir/host_ca.pem"}
$redis_line
oidc:
  issuers:
    - issuer_url: http://127.0.0.1:$dport/dev/oidc
      audiences: [sshca]
      allowed_email_domains: [example.com]
audit: {key_file: $dir/audit.key}
EOF
	"$S" serve --config "$dir/$name.yaml" >"$dir/$name-serve.log" 2>&1 &
	local serve_pid=$!
	pids+=("$serve_pid")
	waitfor "$dir/$name-serve.log" '"sshca serving"' "sshca serve ($name)"
	for i in $(seq "$RUNS"); do
		"$S" bench --server "http://127.0.0.1:$sport" --token-url "http://127.0.0.1:$dport/dev/token" --state "$dir/dev" \
			--server-pid "$serve_pid$rpids" --duration "$DURATION" --concurrency "$CONCURRENCY" >"$dir/$name-$i.txt" 2>/dev/null
		echo "  $name, run $i: $(tail -n 1 "$dir/$name-$i.txt")"
	done
	kill "$serve_pid" ${rpids//,/ } 2>/dev/null # the next deployment runs alone
	local files=()
	for i in $(seq "$RUNS"); do files+=("$dir/$name-$i.txt"); done
	echo "bench-cluster $name: certs/s $(for f in "${files[@]}"; do field "$f" certs/s; done | median)" \
		" p99 ms $(for f in "${files[@]}"; do field "$f" p99; done | median)" \
		" server CPU us/cert $(for f in "${files[@]}"; do field "$f" server_cpu_us_per_cert; done | median)" \
		" errors $(for f in "${files[@]}"; do field "$f" errors; done | awk '{s+=$1} END {print s+0}')"
}

echo "bench-cluster: RUNS=$RUNS DURATION=$DURATION CONCURRENCY=$CONCURRENCY (median [min..max])"
deployment single 1
deployment cluster3 3
