package services

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sshca/sshca/ca"
)

// checkKeysTokens is checkKeys as it was, a walk over json.Decoder.Token: the reference that
// FuzzCheckKeys holds the byte walk to.
func checkKeysTokens(body []byte, known map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	type frame struct {
		object bool
		keys   map[string]bool
		expect bool
	}
	var stack []*frame
	first := true
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return nil
		}
		if first {
			first = false
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return ca.Invalid("request body must be a JSON object {...}, not %s", jsonKind(tok))
			}
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.expect {
			if key, ok := tok.(string); ok {
				lower := strings.ToLower(key)
				if top.keys[lower] {
					return ca.Invalid("request body: field %q appears twice (also in another letter case); send it once", printable(key))
				}
				top.keys[lower] = true
				if len(stack) == 1 && !known[key] {
					return unknownField(key, known)
				}
				top.expect = false
				continue
			}
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if len(stack) >= maxJSONDepth {
				return ca.Invalid("request body is nested deeper than %d levels", maxJSONDepth)
			}
			stack = append(stack, &frame{object: tok == json.Delim('{'), keys: map[string]bool{}, expect: tok == json.Delim('{')})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				return nil
			}
		}
		if top := stack[len(stack)-1]; top.object {
			top.expect = true
		}
	}
}

var fuzzKnown = map[string]bool{"public_key": true, "principals": true, "ttl": true, "reason": true, "K": true}

// keysSeeds are bodies that reach each branch of checkKeys: the refusals (a key twice, also in
// another case or through an escape or a Unicode case mapping, an unknown or case-variant key,
// a body that is not an object, nesting too deep, many keys in one object) and bodies that
// must pass (nested objects with their own keys, keys in values, escapes in values).
var keysSeeds = []string{
	`{"public_key":"x"}`,
	`{"public_key":"x","public_key":"y"}`,
	`{"public_key":"x","PUBLIC_KEY":"y"}`,
	`{"public_key":"x","public\u005fkey":"y"}`,
	`{"public\u005fkey":"x"}`,
	`{"\u004b":1}`, `{"K":1,"\u212a":2}`, `{"K":1,"k":2}`,
	`{"Public_Key":"x"}`, `{"nope":1}`, `{"\ud800":1}`, "{\"k\xff\":1}",
	`[]`, `"x"`, `12`, `-1`, `true`, `false`, `null`, `{}`, ` {"ttl" : "5m" } `,
	`{"principals":[[[[[[[[[[]]]]]]]]]]}`, `{"principals":[[[[[[[]]]]]]]}`,
	`{"principals":[{"a":1,"A":2}]}`, `{"principals":[{"a":1},{"a":2}]}`, `{"principals":[{"a":{"a":1}}],"ttl":"1"}`,
	`{"principals":["public_key","public_key"],"public_key":"x"}`,
	`{"reason":"a\"b\\","ttl":"5m"}`, `{"ttl":1e5,"reason":null,"principals":[true,false,-0.5]}`,
	`{"principals":[{"a1":1,"a2":1,"a3":1,"a4":1,"a5":1,"a6":1,"a7":1,"a8":1,"a9":1,"b1":1,"b2":1,"b3":1,"b4":1,"b5":1,"b6":1,"b7":1,"b8":1,"a5":2}]}`,
	`{"principals":[{"a1":1,"a2":1,"a3":1,"a4":1,"a5":1,"a6":1,"a7":1,"a8":1,"a9":1,"b1":1,"b2":1,"b3":1,"b4":1,"b5":1,"b6":1,"b7":1,"b8":1,"b9":2}],"ttl":"x","TTL":"y"}`,
	`{"public_key":"x"} {"public_key":"y"}`, `{"public_key":"x"}}`,
}

// FuzzCheckKeys: on every valid JSON body the byte walk answers what the Token walk answers,
// the same error or none; on any other body it does not panic (the decoder refuses those).
func FuzzCheckKeys(f *testing.F) {
	for _, s := range keysSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		got := checkKeys([]byte(body), fuzzKnown)
		if !json.Valid([]byte(body)) {
			return
		}
		want := checkKeysTokens([]byte(body), fuzzKnown)
		if (got == nil) != (want == nil) || got != nil && got.Error() != want.Error() {
			t.Fatalf("checkKeys(%q) = %v, the Token walk says %v", body, got, want)
		}
	})
}

// TestCheckKeysSeeds runs the seeds through both walks and shows that the seeds reach the
// refusals: a test that cannot fail would say nothing.
func TestCheckKeysSeeds(t *testing.T) {
	refused := 0
	for _, s := range keysSeeds {
		got, want := checkKeys([]byte(s), fuzzKnown), checkKeysTokens([]byte(s), fuzzKnown)
		if json.Valid([]byte(s)) && ((got == nil) != (want == nil) || got != nil && got.Error() != want.Error()) {
			t.Errorf("checkKeys(%q) = %v, the Token walk says %v", s, got, want)
		}
		if got != nil {
			refused++
		}
	}
	if refused < 15 {
		t.Errorf("only %d seeds refused", refused)
	}
}

// BenchmarkCheckKeys is the key check of a certificate request's body.
func BenchmarkCheckKeys(b *testing.B) {
	body := []byte(`{"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop", "principals": ["alice"], "ttl": "5m"}`)
	for _, bc := range []struct {
		name  string
		check func([]byte, map[string]bool) error
	}{{"bytes", checkKeys}, {"tokens", checkKeysTokens}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.check(body, fuzzKnown); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// jsonKind names the JSON value a token starts.
func jsonKind(tok json.Token) string {
	switch t := tok.(type) {
	case json.Delim:
		if t == '[' {
			return "an array [...]"
		}
		return "a " + string(t)
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return "something else"
}

// TestDiscoveryReportTrailingData: a discovery report is one JSON object and nothing after it
// but white space; a '}' or ']' after it (which json.Decoder.More does not see) is refused.
func TestDiscoveryReportTrailingData(t *testing.T) {
	for body, want := range map[string]string{
		`{"host":"h","keys":[]}`:            "",
		"{\"host\":\"h\",\"keys\":[]} \r\n": "",
		`{"host":"h","keys":[]}}`:           "unexpected data after the JSON object",
		`{"host":"h","keys":[]}]`:           "unexpected data after the JSON object",
		`{"host":"h","keys":[]} {}`:         "unexpected data after the JSON object",
	} {
		r := httptest.NewRequest(http.MethodPost, "/v1/discovery", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer tok")
		_, err := decodeDiscoveryReport(context.Background(), r)
		switch {
		case want == "" && err != nil:
			t.Errorf("%q: %v", body, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want) || ca.KindOf(err) != ca.KindInvalid):
			t.Errorf("%q: %v, want 400 %q", body, err, want)
		}
	}
}
