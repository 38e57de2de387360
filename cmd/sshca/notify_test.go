package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// TestWebhookConfig: webhook URLs are https (http only on loopback), carry no credentials, name
// a known format and a secret file of at least 16 characters; each problem names its field.
func TestWebhookConfig(t *testing.T) {
	dir := t.TempDir()
	good, short := filepath.Join(dir, "good"), filepath.Join(dir, "short")
	writeFile(t, good, "0123456789abcdef0123\n")
	writeFile(t, short, "tooshort\n")
	for _, c := range []struct {
		w    WebhookConfig
		want string // "" when valid
	}{
		{WebhookConfig{URL: "https://hooks.example.com/x", Format: "slack", SecretFile: good}, ""},
		{WebhookConfig{URL: "http://127.0.0.1:9000/hook", SecretFile: good}, ""},
		{WebhookConfig{URL: "http://[::1]:9000/hook", SecretFile: good}, ""},
		{WebhookConfig{URL: "http://hooks.example.com/x", SecretFile: good}, "plain http is only for loopback"},
		{WebhookConfig{URL: "http://127.0.0.1.evil.example/x", SecretFile: good}, "plain http is only for loopback"},
		{WebhookConfig{URL: "ftp://hooks.example.com/x", SecretFile: good}, "scheme"},
		{WebhookConfig{URL: "/relative", SecretFile: good}, "not an absolute URL"},
		{WebhookConfig{URL: "https://user:pw@hooks.example.com/x", SecretFile: good}, "no credentials in the URL"},
		{WebhookConfig{URL: "https://hooks.example.com/x", Format: "xml", SecretFile: good}, "format"},
		{WebhookConfig{URL: "https://hooks.example.com/x"}, "secret_file is required"},
		{WebhookConfig{URL: "https://hooks.example.com/x", SecretFile: short}, "shorter than 16"},
		{WebhookConfig{URL: "https://hooks.example.com/x", SecretFile: filepath.Join(dir, "missing")}, "secret_file"},
	} {
		var msgs []string
		NotificationsConfig{Webhooks: []WebhookConfig{c.w}}.validate(true, func(f string, a ...any) {
			msgs = append(msgs, fmt.Sprintf(f, a...))
		})
		got := strings.Join(msgs, "; ")
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) || (c.want != "" && !strings.Contains(got, "notifications.webhooks[0]")) {
			t.Errorf("%+v: %q, want %q", c.w, got, c.want)
		}
	}
}
