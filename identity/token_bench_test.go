package identity

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// benchToken is shaped like the token of BenchmarkVerifyES256: an ES256 header with a kid and
// the devissuer's claims.
var benchToken = func() string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"ES256","kid":"3f1c2a9b7d6e5f40","typ":"JWT"}`)) + "." +
		enc([]byte(`{"aud":"sshca","exp":1764000600,"groups":["ops"],"iat":1764000000,"iss":"http://127.0.0.1:40000/oidc","jti":"5f1d3c2b1a0f9e8d7c6b5a49","nbf":1764000000,"preferred_username":"alice","sub":"u"}`)) + "." +
		enc(make([]byte, 64))
}()

// BenchmarkParseToken is what Authenticate does before go-oidc verifies the signature; compare
// with BenchmarkVerifyES256 (the whole of Authenticate).
func BenchmarkParseToken(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseToken(benchToken); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseTokenBefore is what Authenticate did before parseToken in the same place: read
// iss from the payload, and later decode the claims into a map.
func BenchmarkParseTokenBefore(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		benchBefore(b)
	}
}

func benchBefore(b *testing.B) {
	{
		parts := strings.Split(benchToken, ".")
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			b.Fatal(err)
		}
		var c struct {
			Iss string `json:"iss"`
		}
		if err := json.Unmarshal(payload, &c); err != nil {
			b.Fatal(err)
		}
		var claims map[string]any
		if err := json.Unmarshal(payload, &claims); err != nil {
			b.Fatal(err)
		}
	}
}
