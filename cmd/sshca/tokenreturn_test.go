package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestServeGivesTokenBack: a `sshca serve` replica configured with another number of
// inventory shards than the store's (here: the store's changed under it by `sshca store
// migrate --inventory-shards 1`) refuses issuance with a 503 after its admission spent the
// single-use token; the answer says the token was given back, and the same token then gets a
// certificate from a replica configured right. Once: sent again, to either replica, it is
// spent, and the refusing replica no longer says it gives it back. The refusing replica's
// sshca_token_returns_total counts the token given back.
func TestServeGivesTokenBack(t *testing.T) {
	srv := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfgA := serveConfig(t, srv.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfgA.Inventory.Shards = 3
	cfgB := *cfgA
	cfgB.Inventory.Shards = 1
	cfgA.DiagListen = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	baseA := startServe(t, cfgA)
	metricsA := "http://" + cfgA.DiagListen + "/metrics"
	returns := func(outcome string) float64 {
		t.Helper()
		n, ok := value(scrape(t, metricsA), "sshca_token_returns_total", map[string]string{"outcome": outcome})
		if !ok {
			t.Fatalf("sshca_token_returns_total{outcome=%q} is not exported", outcome)
		}
		return n
	}
	for _, o := range []string{"given_back", "spent", "unknown"} {
		if n := returns(o); n != 0 {
			t.Fatalf("sshca_token_returns_total{outcome=%q} = %v before any refusal", o, n)
		}
	}
	mint := minter(t, idp)
	body := map[string]any{"public_key": readFile(t, keygen(t, t.TempDir(), "k")+".pub")}
	user := func(sub string) string {
		return mint(map[string]any{"sub": sub, "preferred_username": sub, "email": sub + "@example.com", "email_verified": true})
	}
	issue(t, baseA, "user", user("warm"), body) // the store at three shards, the scripts loaded
	if out, err := runCLI(t, "", "store", "migrate", "--redis", "redis://"+srv.Addr, "--inventory-shards", "1"); err != nil {
		t.Fatalf("store migrate --inventory-shards 1: %v\n%s", err, out)
	}
	tok := user("ci")
	code, out := call(t, http.MethodPost, baseA+"/v1/certs/user", tok, body)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(out), "inventory shards") ||
		!strings.Contains(string(out), "the token was given back and may be used again") {
		t.Fatalf("the replica of three shards on a store of one = %d %s; want 503 naming the shards and giving the token back", code, out)
	}
	if n := returns("given_back"); n != 1 {
		t.Errorf("sshca_token_returns_total{outcome=\"given_back\"} = %v after one token given back, want 1", n)
	}
	baseB := startServe(t, &cfgB)
	if code, out := call(t, http.MethodPost, baseB+"/v1/certs/user", tok, body); code != http.StatusOK {
		t.Fatalf("the token given back, at a replica of the store's number = %d %s; want 200", code, out)
	}
	if code, out := call(t, http.MethodPost, baseB+"/v1/certs/user", tok, body); code != http.StatusUnauthorized {
		t.Fatalf("the token again after its certificate = %d %s; want 401", code, out)
	}
	code, out = call(t, http.MethodPost, baseA+"/v1/certs/user", tok, body)
	if code != http.StatusServiceUnavailable || strings.Contains(string(out), "given back") {
		t.Fatalf("the spent token at the refusing replica = %d %s; want 503 that gives nothing back", code, out)
	}
}
