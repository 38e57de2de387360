package ca_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// BenchmarkIssueUser is the authority's user-certificate path with real parts: a verified
// identity (the token check is measured in identity/), the shipped policy prepared once, an
// Ed25519 softkms CA key, and the in-memory inventory. It is the baseline for performance work.
func BenchmarkIssueUser(b *testing.B) {
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
		Policy:        pol, UserSigner: sgn, HostSigner: sgn, Store: db, Revocations: db,
	})
	if err != nil {
		b.Fatal(err)
	}
	_, userKey := newSSHKey(b)
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Issue(ctx, "good", req); err != nil {
			b.Fatal(err)
		}
	}
}
