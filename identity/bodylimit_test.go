package identity_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/bodylimit"
)

// padded is doc as JSON of exactly size bytes (a padding member makes up the difference), or
// as it is when size is 0.
func padded(t *testing.T, doc map[string]any, size int) []byte {
	t.Helper()
	doc["x_padding"] = ""
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if size == 0 {
		return b
	}
	if size < len(b) {
		t.Fatalf("padded: %d bytes asked, the document alone is %d", size, len(b))
	}
	doc["x_padding"] = strings.Repeat("a", size-len(b))
	if b, err = json.Marshal(doc); err != nil || len(b) != size {
		t.Fatalf("padded: %d bytes, want %d (%v)", len(b), size, err)
	}
	return b
}

// TestIssuerAnswersBounded: go-oidc reads an issuer's discovery document and key set whole;
// sshca gives it a client that reads at most bodylimit.Issuer bytes of each. An issuer whose
// answers are exactly that long is trusted as usual; one byte more in either is a 503 whose
// message names the URL and the bound, not a read without end (nor a truncated document
// misread as something else).
func TestIssuerAnswersBounded(t *testing.T) {
	for _, tt := range []struct {
		name                string
		docBytes, keysBytes int
		tooLong             string // the path named in the refusal; "" for none
	}{
		{"both at the bound", bodylimit.Issuer, bodylimit.Issuer, ""},
		{"discovery one byte over", bodylimit.Issuer + 1, 0, "/.well-known/openid-configuration"},
		{"key set one byte over", 0, bodylimit.Issuer + 1, "/jwks"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ti := newTestIssuer(t, "ES256")
			mux := http.NewServeMux()
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			ti.url = srv.URL
			mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
				_, _ = w.Write(padded(t, map[string]any{"issuer": ti.url, "jwks_uri": ti.url + "/jwks"}, tt.docBytes))
			})
			keys, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ti.key.Public(), KeyID: ti.kid, Algorithm: "ES256", Use: "sig"}}})
			if err != nil {
				t.Fatal(err)
			}
			var keySet map[string]any
			if err := json.Unmarshal(keys, &keySet); err != nil {
				t.Fatal(err)
			}
			mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
				_, _ = w.Write(padded(t, keySet, tt.keysBytes))
			})
			_, err = ti.verifier(t).Authenticate(context.Background(), ti.mint(t, nil))
			if tt.tooLong == "" {
				if err != nil {
					t.Fatalf("answers of exactly %d bytes: %v", bodylimit.Issuer, err)
				}
				return
			}
			var ce *ca.Error
			if !errors.As(err, &ce) || ce.Kind != ca.KindUnavailable {
				t.Fatalf("got %v, want 503 (ca.Unavailable)", err)
			}
			if want := fmt.Sprintf("the answer of %s%s is longer than %d bytes", srv.URL, tt.tooLong, bodylimit.Issuer); !strings.Contains(ce.Msg, want) {
				t.Errorf("message %q, want it to contain %q", ce.Msg, want)
			}
		})
	}
}
