#!/usr/bin/env bash
# go tool task bench-cluster: issuance of one `sshca serve` (plain HTTP on loopback, HMAC audit
# chain) against one redis-server, then against a Redis Cluster of three masters, with
# `sshca bench` closed loop; RUNS runs of DURATION each, the median and [min..max] printed.
# server_cpu_us_per_cert sums serve and every redis-server. Not part of `go tool task test`.
# Variables: RUNS (5), DURATION (10s), CONCURRENCY (16), MODES ("single cluster3"; add
# "replicas2": two `sshca serve` replicas on one redis-server, each driven by its own
# `sshca bench` at CONCURRENCY/2 in flight over one shared window (--start-at), so the load
# in flight is the single run's; it reports the sum of certs/s, the CPU per certificate of
# both replicas and redis-server over that window, redis-server's alone, and
# `sshca audit verify` of the one chain both replicas appended to). A mode with "-sN" after
# it (cluster3-s3, replicas2-s3) runs the same with audit.stripes N, so one invocation compares
# one chain with N stripes; "-iN" (cluster3-i3, cluster3-s3-i3) with inventory.shards N.
set -u
RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-16}
MODES=${MODES:-single cluster3}
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

# deployment NAME MASTERS [REPLICAS]: starts the Redis of the deployment, then serve on it
# (REPLICAS of them, default 1), and benches.
deployment() {
	local name=$1 masters=$2 replicas=${3:-1} addrs="" rpids="" redis_line
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
	local sport gport
	sport=$(freeport)
	gport=$(freeport) # not the default 9850: others run benchmarks on this machine, and replicas
	cat >"$dir/$name.yaml" <<EOF
listen: 127.0.0.1:$sport
diag_listen: 127.0.0.1:$gport
user_ca: {kms: "softkms:", key: "softkms:path=$dir/user_ca.pem"}
host_ca: {kms: "softkms:", key: "softkms:path=$dir/host_ca.pem"}
$redis_line
oidc:
  issuers:
    - issuer_url: http://127.0.0.1:$dport/dev/oidc
      audiences: [sshca]
      allowed_email_domains: [example.com]
audit: {key_file: $dir/audit.key, stripes: $stripes}
inventory: {shards: $invshards}
EOF
	if [ "$replicas" -gt 1 ]; then
		replicas_run "$name" "$replicas" "$sport" "$rpids" "${addrs%%,*}"
		return
	fi
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

# replicas_run NAME REPLICAS PORT RPIDS ADDR: REPLICAS serve processes on the Redis just
# started (config $dir/NAME.yaml, the first on PORT, the others on ports of their own), each
# driven by its own bench at CONCURRENCY/REPLICAS in flight, all in one window.
replicas_run() {
	local name=$1 replicas=$2 port=$3 rpids=$4 addr=$5 spids="" sports=() k
	for k in $(seq "$replicas"); do
		local p=$port g
		[ "$k" -gt 1 ] && p=$(freeport)
		g=$(freeport)
		sed "s/^listen: .*/listen: 127.0.0.1:$p/; s/^diag_listen: .*/diag_listen: 127.0.0.1:$g/" "$dir/$name.yaml" >"$dir/$name-r$k.yaml"
		"$S" serve --config "$dir/$name-r$k.yaml" >"$dir/$name-r$k-serve.log" 2>&1 &
		pids+=($!)
		spids="$spids,$!"
		sports+=("$p")
		waitfor "$dir/$name-r$k-serve.log" '"sshca serving"' "sshca serve ($name, replica $k)"
	done
	local secs=${DURATION%s} per=$((CONCURRENCY / replicas)) i
	[ "$per" -ge 1 ] || per=1
	case $DURATION in *s) ;; *) die "DURATION=$DURATION: give seconds for MODES=replicas2, such as 10s" ;; esac
	# Tokens: 3,000/s of the whole window per generator, minted before the shared window
	# (the generators mint at the same time, together about 3,000/s here).
	local tokens=$((3000 * secs))
	for i in $(seq "$RUNS"); do
		local at=$(($(date +%s) + 5 + 2 * tokens * replicas / 3000)) bpids=()
		for k in $(seq "$replicas"); do
			# Every generator measures the CPU of every replica and redis-server over the
			# same window; the totals are divided by the certificates of all of them below.
			"$S" bench --server "http://127.0.0.1:${sports[$((k - 1))]}" --token-url "http://127.0.0.1:$dport/dev/token" --state "$dir/dev" \
				--server-pid "${spids#,}$rpids" --duration "$DURATION" --concurrency "$per" --tokens "$tokens" --start-at "$at" \
				>"$dir/$name-$i-r$k.txt" 2>"$dir/$name-$i-r$k.err" &
			bpids+=($!)
		done
		wait "${bpids[@]}"
		# Per run: the sum of certs/s; the CPU of all replicas and redis-servers over the
		# window (the first generator's figure times its certificates), per certificate of all.
		for k in $(seq "$replicas"); do
			grep -q '^certs/s: ' "$dir/$name-$i-r$k.txt" ||
				die "$name, run $i, replica $k: bench failed: $(cat "$dir/$name-$i-r$k.txt"; grep -v '^bench: ' "$dir/$name-$i-r$k.err"; tail -n 3 "$dir/$name"-r*-serve.log)"
			echo "  $name, run $i, replica $k: $(tail -n 1 "$dir/$name-$i-r$k.txt")"
			grep -h '^bench: warning' "$dir/$name-$i-r$k.txt" | sed 's/^/    /'
		done
		local certs=0 cps=0 errs=0 f
		for k in $(seq "$replicas"); do
			f=$dir/$name-$i-r$k.txt
			certs=$((certs + $(sed -n 's/^bench: [0-9]* requests in .*), \([0-9]*\) certificates.*/\1/p' "$f")))
			cps=$(awk -v a="$cps" -v b="$(field "$f" certs/s)" 'BEGIN {print a + b}')
			errs=$((errs + $(field "$f" errors)))
		done
		f=$dir/$name-$i-r1.txt
		local mine
		mine=$(sed -n 's/^bench: [0-9]* requests in .*), \([0-9]*\) certificates.*/\1/p' "$f")
		# by process: "PID (comm): us, ..." over the shared window, per certificate of the first.
		grep '^bench: server_cpu_us_per_cert by process' "$f" | sed 's/.*by process: //' | tr ',' '\n' |
			awk -v mine="$mine" -v all="$certs" -v cps="$cps" -v errs="$errs" '
				{ v = $NF * mine / all; total += v; if ($2 ~ /redis/) redis += v; else sshca += v }
				END { printf "%d %.0f %.0f %.0f %d\n", cps, total, sshca, redis, errs }' >"$dir/$name-$i.sum"
		read -r c t sc r e <"$dir/$name-$i.sum"
		echo "  $name, run $i, both replicas: certs/s $c  server CPU us/cert $t (sshca replicas $sc, redis-server $r)  errors $e"
	done
	echo "bench-cluster $name: certs/s (sum) $(for i in $(seq "$RUNS"); do awk '{print $1}' "$dir/$name-$i.sum"; done | median)" \
		" server CPU us/cert $(for i in $(seq "$RUNS"); do awk '{print $2}' "$dir/$name-$i.sum"; done | median)" \
		" of which redis-server $(for i in $(seq "$RUNS"); do awk '{print $4}' "$dir/$name-$i.sum"; done | median)" \
		" errors $(for i in $(seq "$RUNS"); do awk '{print $5}' "$dir/$name-$i.sum"; done | awk '{s+=$1} END {print s+0}')"
	# One audit chain holds both replicas' records, intact.
	echo "bench-cluster $name: audit chain: $("$S" audit verify --redis "redis://${addr//\"/}" --key-file "$dir/audit.key" 2>&1 | tail -n 1)"
	kill ${spids//,/ } ${rpids//,/ } 2>/dev/null
}

echo "bench-cluster: RUNS=$RUNS DURATION=$DURATION CONCURRENCY=$CONCURRENCY MODES=\"$MODES\" (median [min..max])"
for mode in $MODES; do
	stripes=1 invshards=1
	case $mode in *-s[0-9]*) stripes=${mode##*-s} stripes=${stripes%%-*} ;; esac
	case $mode in *-i[0-9]*) invshards=${mode##*-i} invshards=${invshards%%-*} ;; esac
	case ${mode%%-*} in
	single) deployment "$mode" 1 ;;
	cluster3) deployment "$mode" 3 ;;
	replicas2) deployment "$mode" 1 2 ;;
	*) die "MODES: $mode is not single, cluster3 or replicas2 (with -sN for audit.stripes N, -iN for inventory.shards N)" ;;
	esac
done
