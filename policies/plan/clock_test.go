package plan

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
)

// clockPolicy's chain_ok reads data alone, but through a built-in that OPA marks deterministic
// and that reads the clock: crypto.x509.parse_and_verify_certificates checks the chain's
// validity at the time of the call (crypto/x509's Verify without CurrentTime).
const clockPolicy = `package p

chain_ok := crypto.x509.parse_and_verify_certificates(data.chain)[0]

via_rule := chain_ok

d := {"chain_ok": chain_ok, "via_rule": via_rule, "n": input.n}
`

// TestClockBuiltinsNotKept: a rule of data alone whose value depends on the clock through a
// built-in (x509 chain verification) is not kept across decisions: once the leaf has expired,
// the next decision says so, as topdown does. The control is a decision before expiry.
func TestClockBuiltinsNotKept(t *testing.T) {
	ctx := context.Background()
	notAfter := time.Now().Add(1500 * time.Millisecond)
	chain := testChain(t, notAfter)
	data := map[string]any{"chain": chain}
	p, err := Compile(ctx, "data.p.d", []Module{{Name: "p.rego", Source: clockPolicy}}, ast.MustInterfaceToValue(data))
	if err != nil {
		t.Fatal(err)
	}
	pq, err := rego.New(rego.Query("data.p.d"), rego.Module("p.rego", clockPolicy), rego.Store(inmem.NewFromObject(data))).PrepareForEval(ctx)
	if err != nil {
		t.Fatal(err)
	}
	decide := func(want bool) {
		t.Helper()
		in := ast.MustParseTerm(`{"n": 1}`).Value
		got, err := p.Eval(ctx, in)
		if err != nil || got == nil {
			t.Fatalf("eval: %v %v", got, err)
		}
		rs, err := pq.Eval(ctx, rego.EvalParsedInput(in))
		if err != nil || len(rs) != 1 {
			t.Fatalf("topdown: %v %v", rs, err)
		}
		td := ast.MustInterfaceToValue(rs[0].Expressions[0].Value)
		for _, k := range []string{"chain_ok", "via_rule"} {
			if v := got.(ast.Object).Get(ast.StringTerm(k)); v == nil || ast.Compare(v.Value, ast.Boolean(want)) != 0 {
				t.Errorf("%s = %v, want %v (topdown %v)", k, v, want, td)
			}
		}
		if v := td.(ast.Object).Get(ast.StringTerm("chain_ok")); ast.Compare(v.Value, ast.Boolean(want)) != 0 {
			t.Fatalf("topdown says chain_ok %v, want %v: the test's chain is wrong", v, want)
		}
	}
	decide(true)
	time.Sleep(time.Until(notAfter) + 1100*time.Millisecond) // x509 times have one-second resolution
	decide(false)
}

// testChain is a root CA and a leaf it signed, PEM, root first, the leaf valid until notAfter.
func testChain(t *testing.T, notAfter time.Time) string {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now().Add(-time.Hour)
	root := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: now,
		NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "leaf"}, NotBefore: now,
		NotAfter: notAfter, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	rootCert, _ := x509.ParseCertificate(rootDER)
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, rootCert, leafKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})) +
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}))
}
