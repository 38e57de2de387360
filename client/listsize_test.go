package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sshca/sshca/client"
)

// TestListsOverOneMiB: the inventory (GET /v1/certs) and the revocation list (GET
// /v1/revocations) are read up to MaxListBytes, not the 1 MiB of other answers: 10,000 live
// certificates, about 4 MiB of JSON, are what `sshca certs list` shows for a modest fleet, and
// 1 MiB (about 2,500 certificates, or 10,000 key IDs revoked) refused it. Both are read whole.
func TestListsOverOneMiB(t *testing.T) {
	const n = 10000
	var inv client.InventoryResponse
	var revs client.RevocationsResponse
	for i := range n {
		inv.Certificates = append(inv.Certificates, client.Certificate{Serial: fmt.Sprint(1000000000000 + i), KeyID: fmt.Sprintf("host:web-%05d.prod.example.com#%d", i, i),
			Kind: "host", Identity: fmt.Sprintf("host:web-%05d.prod.example.com", i), Principals: []string{fmt.Sprintf("web-%05d.prod.example.com", i)},
			KeyFingerprint: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", CAFingerprint: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
			ValidAfter: "2026-11-30T07:00:00Z", ValidBefore: "2026-11-30T07:10:00Z"})
	}
	for i := range 2 * n {
		revs.UserCA.Entries = append(revs.UserCA.Entries, client.RevocationEntry{Kind: "key_id", Value: fmt.Sprintf("alice-%05d@example.com#%d", i, i), Expires: "2026-11-30T07:10:00Z"})
	}
	invJSON, _ := json.Marshal(inv)
	revJSON, _ := json.Marshal(revs)
	if len(invJSON) <= client.MaxAnswerBytes || len(revJSON) <= client.MaxAnswerBytes {
		t.Fatalf("answers of %d and %d bytes: the test does not test answers over MaxAnswerBytes", len(invJSON), len(revJSON))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/certs" {
			_, _ = w.Write(invJSON)
			return
		}
		_, _ = w.Write(revJSON)
	}))
	defer srv.Close()
	c := client.New(srv.URL)
	ctx := context.Background()
	certs, err := c.Inventory(ctx, "tok", client.CertQuery{})
	if err != nil || len(certs) != n {
		t.Errorf("inventory of %d certificates (%d bytes): %d, %v", n, len(invJSON), len(certs), err)
	}
	got, err := c.Revocations(ctx, "tok")
	if err != nil || len(got.UserCA.Entries) != 2*n {
		t.Errorf("revocation list of %d entries (%d bytes): %d, %v", 2*n, len(revJSON), len(got.UserCA.Entries), err)
	}
}
