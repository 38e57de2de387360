#!/usr/bin/env bash
# The cryptography of one issuance, measured alone with both cores busy: the token signature
# check (identity.BenchmarkVerify$ALG, a whole Authenticate with a cached key set) and the
# certificate signature (signer.BenchmarkSignEd25519), run at the same time as two processes
# of one thread each, COUNT times. Their ns/op are CPU per operation (each process keeps its
# core busy); their sum is the floor that docs/performance.md compares serve's CPU per
# certificate with. The figures are cpu-ns/op (the process's CPU time per operation): on a
# machine that others load, ns/op is wall time and grows with their load. Run through `go tool task bench-crypto`.
set -u
ALG=${ALG:-ES256}
COUNT=${COUNT:-5}
BENCHTIME=${BENCHTIME:-2s}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go test -c -o "$dir/identity.test" ./identity || exit 1
go test -c -o "$dir/signer.test" ./signer || exit 1
(cd identity && "$dir/identity.test" -test.run '^$' -test.bench "^BenchmarkVerify$ALG\$" -test.benchmem -test.cpu 1 \
	-test.count "$COUNT" -test.benchtime "$BENCHTIME" >"$dir/verify.txt") &
v=$!
(cd signer && "$dir/signer.test" -test.run '^$' -test.bench '^BenchmarkSignEd25519$' -test.benchmem -test.cpu 1 \
	-test.count "$COUNT" -test.benchtime "$BENCHTIME" >"$dir/sign.txt") &
s=$!
wait "$v" "$s"
grep '^Benchmark' "$dir/verify.txt" "$dir/sign.txt" | sed "s|$dir/||"
# cpuus FILE: the cpu-ns/op of each line, in microseconds.
cpuus() { awk '/^Benchmark/ {for (i = 1; i < NF; i++) if ($(i + 1) == "cpu-ns/op") print $i / 1000}' "$1"; }
# median [min..max] of cpu-ns/op, in microseconds.
stats() { cpuus "$1" | sort -g | awk '{v[NR]=$1} END {m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%.1f [%.1f..%.1f]", m, v[1], v[NR]}'; }
med() { cpuus "$1" | sort -g | awk '{v[NR]=$1} END {print (NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2}'; }
echo "bench-crypto ($ALG, both cores busy, median [min..max] of $COUNT, CPU us/op): verify $(stats "$dir/verify.txt")  sign $(stats "$dir/sign.txt")  sum of medians $(awk -v a="$(med "$dir/verify.txt")" -v b="$(med "$dir/sign.txt")" 'BEGIN {printf "%.1f", a+b}')"
