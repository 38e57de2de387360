#!/usr/bin/env bash
# stages.sh BINARY PROFILE: where serve's CPU went, per stage of an issuance, from a CPU
# profile (cumulative time of the function that is each stage; stages nest, so they do not
# add up: the token check includes its signature check). The last lines are the
# cryptography's share (token signature check plus certificate signature) and the ratio of
# everything else in serve to it. Used by serve.sh; docs/performance.md quotes its output.
set -u
bin=$1
prof=$2
cum=$(go tool pprof -top -cum -nodecount 100000 "$bin" "$prof" 2>/dev/null)
total=$(echo "$cum" | sed -n 's/.*Total samples = \([0-9.]*\)\(m\?s\).*/\1 \2/p' | awk '{print ($2 == "ms") ? $1 / 1000 : $1}')
# secs FUNCTION-REGEX: the largest cumulative time, in seconds, of a function matching it.
secs() {
	echo "$cum" | awk -v re="$1" '
		function s(v) { if (v ~ /ms$/) return substr(v, 1, length(v) - 2) / 1000; if (v ~ /s$/) return substr(v, 1, length(v) - 1) + 0; return 0 }
		NF >= 6 { name = $6; for (i = 7; i <= NF; i++) name = name " " $i; if (name ~ re) { v = s($4); if (v > best) best = v } }
		END { printf "%.3f", best + 0 }'
}
row() { # row LABEL REGEX
	local v
	v=$(secs "$2")
	printf '  %-62s %6.2fs %5.1f%%\n' "$1" "$v" "$(awk -v v="$v" -v t="$total" 'BEGIN {print (t > 0) ? 100 * v / t : 0}')"
}
# The certificate's signature: Ed25519 in process (softkms), or the PKCS#11 call through
# crypto11 (C_SignInit and C_Sign in the HSM's library, seen as cgo calls).
signre='^(crypto/ed25519.PrivateKey.Sign|github.com/ThalesGroup/crypto11.\(\*pkcs11PrivateKey(ECDSA|RSA)\).Sign)$'
echo "serve CPU profile: $total s of samples"
row "HTTP handler, whole (net/http's serverHandler down)" '^net/http.serverHandler.ServeHTTP$'
row "ca.IssueRequest (authenticate..audit)" '^github.com/sshca/sshca/ca.\(\*Authority\).IssueRequest$'
row "  token check (identity Authenticate)" '^github.com/sshca/sshca/identity.\(\*Verifier\).Authenticate$'
row "    its signature check (ECDSA/RSA verify)" '^crypto/(ecdsa.VerifyASN1|rsa.VerifyPKCS1v15)$'
row "  policy (Decide)" '^github.com/sshca/sshca/policies.\(\*Engine\).Decide$'
row "  refusal check (store Refused)" '^github.com/sshca/sshca/store.\(\*Redis\).Refused$'
row "  token ledger (store UseToken)" '^github.com/sshca/sshca/store.\(\*Redis\).UseToken$'
row "  pre-sign round trip (store Admit)" '^github.com/sshca/sshca/store.\(\*Redis\).Admit$'
row "  serial reservation (store ReserveSerial)" '^github.com/sshca/sshca/store.\(\*Redis\).ReserveSerial$'
row "  certificate signature (Ed25519, or PKCS#11 through crypto11)" "$signre"
row "    of which PKCS#11 C_SignInit (SoftHSM2)" '^github.com/miekg/pkcs11.\(\*Ctx\).SignInit$'
row "  inventory (store Record)" '^github.com/sshca/sshca/store.\(\*Redis\).Record$'
row "  audit record (audit Append or AppendIssued)" '^github.com/sshca/sshca/audit.\(\*Log\).Append(Issued)?$'
row "log lines (slog Logger.log or logAttrs, largest)" '^log/slog.\(\*Logger\).(log|logAttrs)$'
row "JSON (encoding/json Marshal+Unmarshal, largest)" '^encoding/json.(Marshal|Unmarshal)$'
row "Redis client (go-redis process + pipelines, largest)" '^github.com/redis/go-redis/v9.\(\*baseClient\).(processPipeline|process)$'
row "TLS record writes (crypto/tls Conn.Write)" '^crypto/tls.\(\*Conn\).Write$'
row "TLS record reads (crypto/tls Conn.Read)" '^crypto/tls.\(\*Conn\).Read$'
row "system calls (Syscall6)" '^internal/runtime/syscall/linux.Syscall6$'
row "garbage collector (gcBgMarkWorker)" '^runtime.gcBgMarkWorker$'
row "allocation (mallocgc)" '^runtime.mallocgc$'
row "goroutine stack growth (newstack)" '^runtime.newstack$'
verify=$(secs '^crypto/(ecdsa.VerifyASN1|rsa.VerifyPKCS1v15)$')
sign=$(secs "$signre")
awk -v v="$verify" -v s="$sign" -v t="$total" 'BEGIN {
	c = v + s
	printf "crypto (token signature + certificate signature): %.2fs = %.1f%% of serve CPU\n", c, (t > 0) ? 100 * c / t : 0
	printf "non-crypto / crypto within serve: %.2f\n", (c > 0) ? (t - c) / c : 0
}'
