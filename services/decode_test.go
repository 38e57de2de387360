package services_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/services"
)

// TestRequestEnvelope: what a request must look like before its content is read. Each case is
// an input that encoding/json or net/http would otherwise accept with a meaning the caller may
// not have intended (a key matched in another case, the last of two keys winning, a form post
// from a browser); the controls show the check lets the plain request through.
func TestRequestEnvelope(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sshPub, _ := ssh.NewPublicKey(pub)
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	ok := `{"public_key":"` + key + `"}`
	deep := `{"public_key":"` + key + `","principals":` + strings.Repeat("[", 20) + strings.Repeat("]", 20) + `}`
	for _, tt := range []struct {
		name string
		body string
		hdr  map[string]string
		auth []string // replaces the default Authorization header when set
		code int
		msg  string
	}{
		{"control", ok, nil, nil, 200, ""},
		{"content type with charset", ok, map[string]string{"Content-Type": "application/json; charset=utf-8"}, nil, 200, ""},
		{"text/plain", ok, map[string]string{"Content-Type": "text/plain"}, nil, 400, "Content-Type must be application/json"},
		{"form", ok, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, nil, 400, "Content-Type must be application/json"},
		{"no content type", ok, map[string]string{"Content-Type": ""}, nil, 400, "Content-Type is missing"},
		{"json lookalike", ok, map[string]string{"Content-Type": "application/jsonx"}, nil, 400, "Content-Type must be application/json"},
		{"duplicate key", `{"public_key":"x","public_key":"` + key + `"}`, nil, nil, 400, `field "public_key" appears twice`},
		{"case variant key", `{"Public_Key":"` + key + `"}`, nil, nil, 400, `unknown field "Public_Key"; field names are lower case: "public_key"`},
		{"case variant duplicate", `{"public_key":"` + key + `","PUBLIC_KEY":"x"}`, nil, nil, 400, "appears twice"},
		{"duplicate ttl", `{"public_key":"` + key + `","ttl":"1h","ttl":"5m"}`, nil, nil, 400, `field "ttl" appears twice`},
		{"array body", `[]`, nil, nil, 400, "must be a JSON object {...}, not an array"},
		{"string body", `"x"`, nil, nil, 400, "must be a JSON object {...}, not a string"},
		{"null body", `null`, nil, nil, 400, "not null"},
		{"deep nesting", deep, nil, nil, 400, "nested deeper than 8 levels"},
		{"trailing brace", ok + "}", nil, nil, 400, "unexpected data after the JSON object"},
		{"trailing bracket", ok + " ]", nil, nil, 400, "unexpected data after the JSON object"},
		{"second object", ok + "{}", nil, nil, 400, "unexpected data after the JSON object"},
		{"trailing white space", ok + " \r\n\t", nil, nil, 200, ""},
		{"byte order mark", "\ufeff" + ok, nil, nil, 400, "malformed JSON at byte 1"},
		{"wrong type", `{"public_key":"` + key + `","principals":"alice"}`, nil, nil, 400, `field "principals" must be a list of strings, not string`},
		{"two authorization headers", ok, nil, []string{"Bearer a", "Bearer b"}, 400, "2 Authorization headers"},
		{"basic auth", ok, nil, []string{"Basic YTpi"}, 401, `Authorization header must be "Bearer <token>"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, &fakeService{})
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/certs/user", strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			for k, v := range tt.hdr {
				if v == "" {
					req.Header.Del(k)
					continue
				}
				req.Header.Set(k, v)
			}
			if tt.auth == nil {
				req.Header.Set("Authorization", "Bearer tok")
			}
			for _, a := range tt.auth {
				req.Header.Add("Authorization", a)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			m := map[string]any{}
			_ = jsonDecode(resp, &m)
			if resp.StatusCode != tt.code {
				t.Fatalf("status %d, want %d (%v)", resp.StatusCode, tt.code, m)
			}
			if msg, _ := m["error"].(string); !strings.Contains(msg, tt.msg) {
				t.Errorf("error %q does not contain %q", msg, tt.msg)
			}
		})
	}
}

func jsonDecode(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }

// FuzzDecodeCertRequest drives arbitrary bodies through the real handler: never a 5xx, never a
// panic, an accepted body reaches the service with exactly the key it carried, and a refused
// one says why in a JSON error.
func FuzzDecodeCertRequest(f *testing.F) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	sshPub, _ := ssh.NewPublicKey(pub)
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	for _, s := range []string{
		`{"public_key":"` + key + `"}`,
		`{"public_key":"x","public_key":"` + key + `"}`,
		`{"Public_Key":"` + key + `"}`,
		`{"public_key":"` + key + `","ttl":"5m","principals":["alice"],"reason":"OPS-1"}`,
		`[]`, `null`, `{"a":{"b":[1,2,{"c":null}]}}`, `{"public_key":"` + key + `"} {}`,
		`{"principals":[[[[[[[[[[]]]]]]]]]]}`, "{\"public_key\":\"\u0000\"}",
	} {
		f.Add(s)
	}
	svc := &fakeService{}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	svc.key, _ = ssh.NewSignerFromKey(priv)
	h := services.NewHTTPHandler(services.MakeEndpoints(svc), services.HTTPOptions{})
	f.Fuzz(func(t *testing.T, body string) {
		svc.seen = ca.CertRequest{}
		r := httptest.NewRequest(http.MethodPost, "/v1/certs/user", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer tok")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 500 {
			t.Fatalf("status %d for %q: %s", w.Code, body, w.Body)
		}
		var m map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
			t.Fatalf("answer is not JSON: %q", w.Body)
		}
		if w.Code == 200 {
			var sent struct {
				PublicKey string `json:"public_key"`
			}
			if err := json.Unmarshal([]byte(body), &sent); err != nil || svc.seen.PublicKey == "" {
				t.Fatalf("accepted %q but the service saw no key", body)
			}
			return
		}
		if msg, _ := m["error"].(string); msg == "" {
			t.Fatalf("status %d without an error message: %s", w.Code, w.Body)
		}
	})
}
