package ui

import (
	"encoding/base64"
	"encoding/json"
	"html"
)

func base64URL(s string) ([]byte, error)  { return base64.RawURLEncoding.DecodeString(s) }
func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
func htmlUnescape(s string) string        { return html.UnescapeString(s) }
