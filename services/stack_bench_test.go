package services

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/kms"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

type benchAuth struct{ id ca.Identity }

func (f benchAuth) Authenticate(context.Context, string) (ca.Identity, error) { return f.id, nil }

// BenchmarkIssueFreshGoroutine issues a certificate (the shipped policy, an Ed25519 softkms
// key, the in-memory store) on a new goroutine each time, as HTTP/2 serves each request:
// "plain" lets the stack grow by doubling under the policy, "grown" grows it first with
// growStack, as grownStack does for the issuance routes.
func BenchmarkIssueFreshGoroutine(b *testing.B) {
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
		Authenticator: benchAuth{ca.Identity{Issuer: "https://idp", Subject: "u1", Email: "alice@example.com", Username: "alice", Groups: []string{"dev"}}},
		Policy:        pol, UserSigner: sgn, HostSigner: sgn, Store: db, Revocations: db,
	})
	if err != nil {
		b.Fatal(err)
	}
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	userKey, err := ssh.NewPublicKey(pub)
	if err != nil {
		b.Fatal(err)
	}
	req := ca.Request{Kind: ca.UserCert, PublicKey: userKey, TTL: 5 * time.Minute}
	for _, bc := range []struct {
		name string
		grow bool
	}{{"plain", false}, {"grown", true}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu, ops := testenv.CPUPerOp(b), 0
			errc := make(chan error)
			for b.Loop() {
				go func() {
					if bc.grow {
						growStack()
					}
					_, err := a.Issue(ctx, "good", req)
					errc <- err
				}()
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
				ops++
			}
			cpu(ops)
		})
	}
}
