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
	if dec.More() {
		return ca.Invalid("request body: unexpected data after the JSON object")
	}
	return nil
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

// checkKeys walks the body's tokens: the top level must be an object whose keys are exactly
// names of known (case-sensitively), no object anywhere may hold a key twice, and nesting stays
// within maxJSONDepth. Syntax errors are left to the decoder, which reports them with an offset.
func checkKeys(body []byte, known map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	type frame struct {
		object bool
		keys   map[string]bool
		expect bool // the next string token is a key
	}
	var stack []*frame
	first := true
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return nil // the decoder says what is malformed
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
				return nil // what follows the object is the decoder's to refuse
			}
		}
		// A value ends: in an object the next token is a key again.
		if top := stack[len(stack)-1]; top.object {
			top.expect = true
		}
	}
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
