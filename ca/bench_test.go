package ca_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// BenchmarkIssueUser is the authority's user-certificate path with real parts: a verified
// identity (the token check is measured in identity/), the shipped policy prepared once, an
// Ed25519 softkms CA key, and the in-memory inventory. It is the baseline for performance work.
func BenchmarkIssueUser(b *testing.B) { benchmarkIssueUser(b, nil) }

// BenchmarkIssueUserLogged is BenchmarkIssueUser with the authority's log line ("issued")
// written as serve writes it, JSON, to io.Discard, at debug level (where it now is: the one
// info line of a decision is services' logging middleware's): the difference is what one log
// line per decision costs.
func BenchmarkIssueUserLogged(b *testing.B) {
	benchmarkIssueUser(b, slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

func benchmarkIssueUser(b *testing.B, log *slog.Logger) {
	ctx := context.Background()
	pol, err := policies.LoadFS(ctx, policies.Embedded)
	if err != nil {
		b.Fatal(err)
	}
	key, err := kms.Create(ctx, kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(b.TempDir(), "ca.pem")}, kms.Ed25519)
	if err != nil {
		b.Fatal(err)
	}
	defer key.Close()
	db := store.NewMemory(time.Now)
	sgn := signer.New(key.Signer(), db, signer.Options{})
	a, err := ca.New(ca.Config{
		Authenticator: fakeAuth{ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice", Groups: []string{"dev"}}},
		Policy:        pol, UserSigner: sgn, HostSigner: sgn, Store: db, Revocations: db, Logger: log,
	})
	if err != nil {
		b.Fatal(err)
	}
	_, userKey := newSSHKey(b)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	b.ReportAllocs()
	cpu, ops := testenv.CPUPerOp(b), 0
	for b.Loop() {
		if _, err := a.Issue(ctx, "good", req); err != nil {
			b.Fatal(err)
		}
		ops++
	}
	cpu(ops)
}

// singleUseAuth is fakeAuth whose every token is a new single-use one (the token ledger
// records each).
type singleUseAuth struct {
	id ca.Identity
	n  atomic.Uint64
}

func (f *singleUseAuth) Authenticate(_ context.Context, token string) (ca.Identity, error) {
	id := f.id
	now := time.Now()
	id.Token = ca.TokenUse{SingleUse: true, ID: "bench|" + strconv.FormatUint(f.n.Add(1), 10), IssuedAt: now, Expiry: now.Add(5 * time.Minute)}
	return id, nil
}

// BenchmarkIssueUserRedis is BenchmarkIssueUser with the state in a real redis-server (one
// client, one request at a time), wired as sshca serve wires it: the admission (signing-time
// refusal check with the generation marks, single-use token, serial reservation, inventory
// record) in one round trip, then the audit record in one more. It measures what Redis round
// trips and the marks cost an issuance.
func BenchmarkIssueUserRedis(b *testing.B) {
	ctx := context.Background()
	pol, err := policies.LoadFS(ctx, policies.Embedded)
	if err != nil {
		b.Fatal(err)
	}
	key, err := kms.Create(ctx, kms.KeyRef{KMS: "softkms:", Key: "softkms:path=" + filepath.Join(b.TempDir(), "ca.pem")}, kms.Ed25519)
	if err != nil {
		b.Fatal(err)
	}
	defer key.Close()
	srv := testenv.StartRedis(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	db := store.NewRedis(rdb, store.RedisOptions{})
	sgn := signer.New(key.Signer(), db, signer.Options{})
	a, err := ca.New(ca.Config{
		Authenticator: &singleUseAuth{id: ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice", Groups: []string{"dev"}}},
		Policy:        pol, UserSigner: sgn, HostSigner: sgn, Store: db, Revocations: db, Tokens: db, Admission: db,
		Audit: audit.New(rdb, audit.Options{Key: make([]byte, audit.KeySize), Marks: db, Bans: db}),
	})
	if err != nil {
		b.Fatal(err)
	}
	_, userKey := newSSHKey(b)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	if _, err := a.Issue(ctx, "good", req); err != nil { // load the scripts
		b.Fatal(err)
	}
	b.ReportAllocs()
	cpu, ops := testenv.CPUPerOp(b), 0
	redisCPU := redisServerCPU(b, rdb)
	for b.Loop() {
		if _, err := a.Issue(ctx, "good", req); err != nil {
			b.Fatal(err)
		}
		ops++
	}
	cpu(ops)
	if ops > 0 {
		b.ReportMetric(float64(redisServerCPU(b, rdb)-redisCPU)/float64(ops), "redis-cpu-ns/op")
	}
}

// redisServerCPU is the CPU time redis-server has used so far, user plus system (INFO cpu:
// used_cpu_user and used_cpu_sys, seconds with microseconds), so that a benchmark can report
// what the server spends per operation besides the client's cpu-ns/op: the issue counts both
// in a certificate's cost.
func redisServerCPU(b *testing.B, rdb *redis.Client) time.Duration {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (k != "used_cpu_user" && k != "used_cpu_sys") {
			continue
		}
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil {
			b.Fatalf("INFO cpu: %s: %v", line, err)
		}
		total += time.Duration(secs * float64(time.Second))
	}
	return total
}
