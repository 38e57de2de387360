package services

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"
	"sync"

	"github.com/sshca/sshca/ca"
)

// maxJSONDepth bounds the nesting of a request body. Every body of the v1 API is an object of
// strings and lists of strings (depth 2); deeper bodies are refused before they are decoded.
const maxJSONDepth = 8

// decodeJSON reads one JSON object of at most MaxBodyBytes into v, a pointer to a struct whose
// json tags name the accepted fields. It refuses, with a KindInvalid error naming the problem:
// a Content-Type other than application/json (a browser may send text/plain across origins
// without asking first), an empty body, anything but one object, a field the struct does not
// name (also one that differs only in case: encoding/json would match it silently), a field
// given twice (encoding/json would keep the last silently), a value of the wrong JSON type, and
// nesting deeper than maxJSONDepth.
func decodeJSON(r *http.Request, v any) error {
	if err := checkContentType(r); err != nil {
		return err
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		return ca.Invalid("reading request body failed; send the body again")
	}
	if len(body) > MaxBodyBytes {
		return errTooLarge
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return ca.Invalid("request body is empty; send a JSON object")
	}
	if err := checkKeys(body, fieldsOf(v)); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return ca.Invalid("request body: %s", jsonProblem(err))
	}
	if !onlySpaceAfter(body, dec) {
		return ca.Invalid("request body: unexpected data after the JSON object; send one JSON object")
	}
	return nil
}

// onlySpaceAfter reports whether nothing but JSON white space follows the value dec decoded
// last from body (RFC 8259 section 2). Not dec.More(), which answers false before a '}' or ']'
// and so let `{...}}` through.
func onlySpaceAfter(body []byte, dec *json.Decoder) bool {
	return skipSpace(body, int(dec.InputOffset())) == len(body)
}

var errTooLarge = errors.New("request body exceeds 64 KiB")

func checkContentType(r *http.Request) error {
	ct := r.Header.Values("Content-Type")
	if len(ct) == 0 {
		return ca.Invalid("Content-Type is missing; send the body as Content-Type: application/json")
	}
	mt, _, err := mime.ParseMediaType(ct[0])
	if len(ct) > 1 || err != nil || mt != "application/json" {
		return ca.Invalid("Content-Type must be application/json")
	}
	return nil
}

// fields caches the accepted top-level keys of each request type.
var fields sync.Map // reflect.Type → map[string]bool

// fieldsOf returns the JSON names of the exported fields of the struct v points to.
func fieldsOf(v any) map[string]bool {
	t := reflect.TypeOf(v).Elem()
	if f, ok := fields.Load(t); ok {
		return f.(map[string]bool)
	}
	names := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		names[name] = true
	}
	fields.Store(t, names)
	return names
}

// checkKeys walks the body once: the top level must be an object whose keys are exactly names
// of known (case-sensitively), no object anywhere may hold a key twice (also in another letter
// case, strings.ToLower), and nesting stays within maxJSONDepth. Syntax errors are left to the
// decoder, which reports them with an offset: on malformed JSON checkKeys may stop early and
// return nil, never more.
//
// It reads the bytes itself, without json.Decoder.Token (about 40 allocations for a
// certificate request): a key is compared as its bytes when it is plain ASCII without escapes
// (the keys of every request), and is otherwise unquoted by encoding/json itself, so a key
// means here what it means to the decoder. FuzzCheckKeys compares it with the Token walk.
func checkKeys(body []byte, known map[string]bool) error {
	type frame struct {
		object bool
		expect bool // the next string is a key
		first  int  // keys[first:] are this object's keys, lower-cased
		seen   map[string]bool
	}
	var stackArr [maxJSONDepth]frame
	stack := stackArr[:0]
	var keysArr [16][]byte
	keys := keysArr[:0]
	i := skipSpace(body, 0)
	if i == len(body) {
		return nil
	}
	if body[i] != '{' {
		if kind := jsonKindAt(body[i]); kind != "" {
			return ca.Invalid("request body must be a JSON object {...}, not %s", kind)
		}
		return nil
	}
	// valueEnds: in an object the next string is a key again.
	valueEnds := func() {
		if top := &stack[len(stack)-1]; top.object {
			top.expect = true
		}
	}
	for i = skipSpace(body, i); i < len(body); i = skipSpace(body, i) {
		switch c := body[i]; c {
		case '{', '[':
			if len(stack) >= maxJSONDepth {
				return ca.Invalid("request body is nested deeper than %d levels", maxJSONDepth)
			}
			stack = append(stack, frame{object: c == '{', expect: c == '{', first: len(keys)})
			i++
		case '}', ']':
			if len(stack) == 0 {
				return nil
			}
			keys = keys[:stack[len(stack)-1].first]
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				return nil // what follows the object is the decoder's to refuse
			}
			valueEnds()
			i++
		case ',', ':':
			i++
		case '"':
			end, plain := stringEnd(body, i)
			if end < 0 {
				return nil
			}
			if len(stack) == 0 {
				return nil
			}
			top := &stack[len(stack)-1]
			if !top.object || !top.expect {
				valueEnds()
				i = end
				continue
			}
			// key is the key as the decoder reads it: its bytes when plain (converted to a
			// string only where Go does not allocate for it: a map index, or an error).
			key, lower := body[i+1:end-1], body[i+1:end-1]
			if plain {
				if hasUpper(key) {
					lower = bytes.ToLower(key)
				}
			} else {
				var decoded string
				if err := json.Unmarshal(body[i:end], &decoded); err != nil {
					return nil // the decoder says what is malformed
				}
				key, lower = []byte(decoded), []byte(strings.ToLower(decoded))
			}
			dup := false
			if top.seen != nil {
				dup = top.seen[string(lower)]
				top.seen[string(lower)] = true
			} else {
				for _, k := range keys[top.first:] {
					if bytes.Equal(k, lower) {
						dup = true
						break
					}
				}
				keys = append(keys, lower)
				if n := len(keys) - top.first; n > 16 {
					// Many keys in one object: a set, so a body of thousands of keys costs
					// linear time, not quadratic.
					top.seen = make(map[string]bool, n)
					for _, k := range keys[top.first:] {
						top.seen[string(k)] = true
					}
					keys = keys[:top.first]
				}
			}
			if dup {
				return ca.Invalid("request body: field %q appears twice (also in another letter case); send it once", printable(string(key)))
			}
			if len(stack) == 1 && !known[string(key)] {
				return unknownField(string(key), known)
			}
			top.expect = false
			i = end
		default:
			// A number, true, false or null: up to the next delimiter.
			j := i
			for j < len(body) && !isDelimiter(body[j]) {
				j++
			}
			if j == i || len(stack) == 0 {
				return nil
			}
			if top := stack[len(stack)-1]; top.object && top.expect {
				return nil // not a key: malformed
			}
			valueEnds()
			i = j
		}
	}
	return nil
}

// skipSpace is the index of the first byte at or after i that is not JSON white space.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd is the index just past the closing quote of the string that opens at b[i], or -1
// when it does not close; plain says it has no escape and no byte outside ASCII.
func stringEnd(b []byte, i int) (end int, plain bool) {
	plain = true
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, plain
		case c == '\\':
			plain = false
			j++
		case c < 0x20 || c >= 0x80:
			plain = false
		}
	}
	return -1, false
}

func hasUpper(b []byte) bool {
	for _, c := range b {
		if 'A' <= c && c <= 'Z' {
			return true
		}
	}
	return false
}

func isDelimiter(c byte) bool {
	switch c {
	case ',', ':', '{', '}', '[', ']', '"', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

// jsonKindAt names the JSON value that starts with c, "" when none does.
func jsonKindAt(c byte) string {
	switch {
	case c == '[':
		return "an array [...]"
	case c == '"':
		return "a string"
	case c == '-' || '0' <= c && c <= '9':
		return "a number"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	}
	return ""
}

func unknownField(key string, known map[string]bool) error {
	for k := range known {
		if strings.EqualFold(k, key) {
			return ca.Invalid("request body: unknown field %q; field names are lower case: %q", printable(key), k)
		}
	}
	return ca.Invalid("request body: unknown field %q", printable(key))
}

// printable bounds a caller's key for an error message: at most 40 bytes, control characters
// escaped by %q.
func printable(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Sprintf("must be a JSON object, not %s", typ.Value)
		}
		return fmt.Sprintf("field %q must be %s, not %s", typ.Field, jsonType(typ.Type), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	default:
		return "not a JSON object"
	}
}

// jsonType names a Go type as the JSON a caller should send.
func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list of " + strings.TrimPrefix(jsonType(t.Elem()), "a ") + "s"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "another type"
}

// bearer is the token of the request's one Authorization header ("" when there is none). Two
// Authorization headers are refused: proxies and frameworks disagree on which one counts.
func bearer(r *http.Request) (string, error) {
	hs := r.Header.Values("Authorization")
	if len(hs) > 1 {
		return "", ca.Invalid("request has %d Authorization headers; send exactly one", len(hs))
	}
	if len(hs) == 0 {
		return "", nil
	}
	h := hs[0]
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:]), nil
	}
	return "", ca.Unauthenticated("Authorization header must be \"Bearer <token>\"", nil)
}
