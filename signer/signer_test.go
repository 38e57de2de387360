package signer_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/signer"
)

type fakeReserver struct {
	taken map[uint64]bool
	err   error
	calls int
}

func (f *fakeReserver) ReserveSerial(_ context.Context, serial uint64, _ time.Time) (bool, error) {
	f.calls++
	if f.err != nil {
		return false, f.err
	}
	if f.taken[serial] {
		return false, nil
	}
	f.taken[serial] = true
	return true, nil
}

// fixedRand yields the given 8-byte big-endian serials in turn, then zeros.
type fixedRand struct{ serials []uint64 }

func (f *fixedRand) Read(p []byte) (int, error) {
	if len(f.serials) == 0 || len(p) != 8 {
		return rand.Read(p) // nonces and signatures
	}
	s := f.serials[0]
	f.serials = f.serials[1:]
	for i := range 8 {
		p[7-i] = byte(s >> (8 * i))
	}
	return 8, nil
}

func newKey(t testing.TB) ssh.Signer {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSign(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	caKey, userKey := newKey(t), newKey(t)
	tmpl := func() *ssh.Certificate {
		return &ssh.Certificate{Key: userKey.PublicKey(), CertType: ssh.UserCert, KeyId: "alice@example.com",
			ValidPrincipals: []string{"alice"}, Permissions: ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}}}
	}
	tests := []struct {
		name       string
		serials    []uint64
		taken      []uint64
		resErr     error
		tmpl       func() *ssh.Certificate
		ttl        time.Duration
		wantSerial uint64
		wantErr    string
	}{
		{name: "ok", serials: []uint64{42}, tmpl: tmpl, ttl: 10 * time.Minute, wantSerial: 42},
		{name: "zero serial skipped", serials: []uint64{0, 43}, tmpl: tmpl, ttl: time.Minute, wantSerial: 43},
		{name: "collision retried", serials: []uint64{44, 45}, taken: []uint64{44}, tmpl: tmpl, ttl: time.Minute, wantSerial: 45},
		{name: "always taken", serials: []uint64{1, 1, 1, 1, 1, 1, 1, 1}, taken: []uint64{1}, tmpl: tmpl, ttl: time.Minute, wantErr: "no free serial"},
		{name: "store down", serials: []uint64{46}, resErr: errors.New("down"), tmpl: tmpl, ttl: time.Minute, wantErr: "reserve serial"},
		{name: "no principals", tmpl: func() *ssh.Certificate { c := tmpl(); c.ValidPrincipals = nil; return c }, ttl: time.Minute, wantErr: "no principals"},
		{name: "zero ttl", tmpl: tmpl, ttl: 0, wantErr: "ttl must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := &fakeReserver{taken: map[uint64]bool{}, err: tt.resErr}
			for _, s := range tt.taken {
				res.taken[s] = true
			}
			s := signer.New(caKey, res, signer.Options{Now: func() time.Time { return now }, Rand: &fixedRand{serials: tt.serials}})
			in := tt.tmpl()
			cert, err := s.Sign(context.Background(), in, tt.ttl)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cert.Serial != tt.wantSerial || cert.KeyId != "alice@example.com#"+strconv.FormatUint(tt.wantSerial, 10) {
				t.Errorf("serial %d key id %q", cert.Serial, cert.KeyId)
			}
			if cert.ValidAfter != uint64(now.Add(-30*time.Second).Unix()) || cert.ValidBefore != uint64(now.Add(tt.ttl).Unix()) {
				t.Errorf("validity [%d, %d]", cert.ValidAfter, cert.ValidBefore)
			}
			if in.KeyId != "alice@example.com" || in.Serial != 0 || in.Signature != nil {
				t.Error("the template was modified")
			}
			checker := ssh.CertChecker{Clock: func() time.Time { return now }}
			if err := checker.CheckCert("alice", cert); err != nil {
				t.Errorf("CheckCert: %v", err)
			}
			if !bytesEqual(cert.SignatureKey.Marshal(), caKey.PublicKey().Marshal()) {
				t.Error("not signed by the CA key")
			}
		})
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// TestSignedCertReadByKeygen: ssh-keygen -L verifies our signature and shows what we set.
func TestSignedCertReadByKeygen(t *testing.T) {
	keygen := testenv.Need(t, "ssh-keygen")
	caKey, userKey := newKey(t), newKey(t)
	s := signer.New(caKey, &fakeReserver{taken: map[uint64]bool{}}, signer.Options{})
	cert, err := s.Sign(context.Background(), &ssh.Certificate{Key: userKey.PublicKey(), CertType: ssh.UserCert, KeyId: "bob",
		ValidPrincipals: []string{"bob", "deploy"}, Permissions: ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}}}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cert.pub")
	if err := os.WriteFile(path, ssh.MarshalAuthorizedKey(cert), 0o644); err != nil {
		t.Fatal(err)
	}
	out := testenv.Run(t, keygen, "-L", "-f", path)
	for _, want := range []string{"Serial: " + strconv.FormatUint(cert.Serial, 10), `Key ID: "bob#`, "bob\n", "deploy\n", "permit-pty", "Critical Options: (none)"} {
		if !strings.Contains(out, want) {
			t.Errorf("ssh-keygen -L lacks %q:\n%s", want, out)
		}
	}
}

func BenchmarkSignEd25519(b *testing.B) {
	caKey, userKey := newKey(b), newKey(b)
	s := signer.New(caKey, &fakeReserver{taken: map[uint64]bool{}}, signer.Options{})
	tmpl := &ssh.Certificate{Key: userKey.PublicKey(), CertType: ssh.UserCert, KeyId: "alice", ValidPrincipals: []string{"alice"}}
	ctx := context.Background()
	b.ReportAllocs()
	cpu, ops := testenv.CPUPerOp(b), 0
	for b.Loop() {
		if _, err := s.Sign(ctx, tmpl, 10*time.Minute); err != nil {
			b.Fatal(err)
		}
		ops++
	}
	cpu(ops)
}

// TestSignWithReservedSerial: a template that carries a serial (reserved by the authority's
// admission) is signed with it and nothing is reserved again; one without draws and reserves
// its own.
func TestSignWithReservedSerial(t *testing.T) {
	caKey, userKey := newKey(t), newKey(t)
	r := &fakeReserver{taken: map[uint64]bool{}}
	s := signer.New(caKey, r, signer.Options{})
	tmpl := &ssh.Certificate{Key: userKey.PublicKey(), CertType: ssh.UserCert, KeyId: "alice", ValidPrincipals: []string{"alice"}, Serial: 4242}
	cert, err := s.Sign(context.Background(), tmpl, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Serial != 4242 || cert.KeyId != "alice#4242" || r.calls != 0 {
		t.Errorf("serial %d, key ID %q, %d reservations; want 4242, alice#4242, none", cert.Serial, cert.KeyId, r.calls)
	}
	tmpl.Serial = 0
	if cert, err = s.Sign(context.Background(), tmpl, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if cert.Serial == 0 || r.calls != 1 || !r.taken[cert.Serial] {
		t.Errorf("without a serial: serial %d, %d reservations; want a reserved one", cert.Serial, r.calls)
	}
}

// TestSignKeepsFixedWindow: a validity window fixed in the template (the authority recorded
// the certificate before signing it) is signed as it is; a window wider than the signer's own,
// ending after now+ttl (the "forever" of PROTOCOL.certkeys among them), already ended, or
// upside down is not: the signer draws its own, never a certificate longer than asked.
func TestSignKeepsFixedWindow(t *testing.T) {
	caKey, userKey := newKey(t), newKey(t)
	now := time.Unix(1_800_000_000, 0)
	s := signer.New(caKey, &fakeReserver{taken: map[uint64]bool{}}, signer.Options{Now: func() time.Time { return now }})
	ttl := 10 * time.Minute
	own := [2]uint64{uint64(now.Add(-30 * time.Second).Unix()), uint64(now.Add(ttl).Unix())}
	sec := func(d time.Duration) uint64 { return uint64(now.Add(d).Unix()) }
	for _, tc := range []struct {
		name      string
		va, vb    uint64
		wantFixed bool
	}{
		{"as the authority fixes it, a second earlier", sec(-31 * time.Second), sec(ttl - time.Second), true},
		{"the signer's own", own[0], own[1], true},
		{"shorter", sec(0), sec(time.Minute), true},
		{"ends after now+ttl", sec(-30 * time.Second), sec(ttl + time.Second), false},
		{"forever", sec(-30 * time.Second), ssh.CertTimeInfinity, false},
		{"wider than the signer's", sec(-time.Hour), sec(ttl), false},
		{"from the epoch", 0, sec(ttl), false},
		{"ended", sec(-time.Hour), sec(-time.Minute), false},
		{"ends now", sec(-time.Minute), sec(0), false},
		{"upside down", sec(time.Minute), sec(0), false},
	} {
		tmpl := &ssh.Certificate{Key: userKey.PublicKey(), CertType: ssh.UserCert, KeyId: "alice", ValidPrincipals: []string{"alice"},
			Serial: 7, ValidAfter: tc.va, ValidBefore: tc.vb}
		cert, err := s.Sign(context.Background(), tmpl, ttl)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := [2]uint64{cert.ValidAfter, cert.ValidBefore}
		want := own
		if tc.wantFixed {
			want = [2]uint64{tc.va, tc.vb}
		}
		if got != want {
			t.Errorf("%s: window %d..%d, want %d..%d", tc.name, got[0], got[1], want[0], want[1])
		}
	}
}
