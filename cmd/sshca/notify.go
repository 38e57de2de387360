package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sshca/sshca/notify"
)

// NotificationsConfig configures the webhooks that hear of access requests (created, approved,
// denied, expired, break-glass, reviewed, cancelled, revoked).
type NotificationsConfig struct {
	// Webhooks each receive every event.
	Webhooks []WebhookConfig `yaml:"webhooks"`
}

// WebhookConfig is one webhook: an https URL (http only on loopback, for tests), its format
// ("json", the default, or "slack") and the file holding the secret its signatures are keyed
// with (X-Sshca-Signature: "v1=" hex HMAC-SHA256 over "timestamp.body").
type WebhookConfig struct {
	// URL is where events are POSTed: https, or http on loopback only.
	URL string `yaml:"url"`
	// Format is "json" (default) or "slack".
	Format string `yaml:"format"`
	// SecretFile holds the HMAC key of the X-Sshca-Signature header.
	SecretFile string `yaml:"secret_file"`
}

// validate adds what is wrong with the webhooks; secretFiles says whether to read the secrets.
func (n NotificationsConfig) validate(secretFiles bool, add func(string, ...any)) {
	for i, w := range n.Webhooks {
		u, err := url.Parse(w.URL)
		switch {
		case err != nil || u.Host == "":
			add("notifications.webhooks[%d].url: %q is not an absolute URL", i, w.URL)
		case u.Scheme == "http" && !loopbackHost(u.Hostname()):
			add("notifications.webhooks[%d].url: plain http is only for loopback; use https", i)
		case u.Scheme != "https" && u.Scheme != "http":
			add("notifications.webhooks[%d].url: scheme %q; use https", i, u.Scheme)
		case u.User != nil:
			add("notifications.webhooks[%d].url: no credentials in the URL; the secret goes in secret_file", i)
		}
		if w.Format != "" && w.Format != "json" && w.Format != "slack" {
			add("notifications.webhooks[%d].format: %q; use json or slack", i, w.Format)
		}
		if w.SecretFile == "" {
			add("notifications.webhooks[%d].secret_file is required: receivers verify the signature with it", i)
		} else if secretFiles {
			if _, err := readWebhookSecret(w.SecretFile); err != nil {
				add("notifications.webhooks[%d].secret_file: %v", i, err)
			}
		}
	}
}

func loopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func readWebhookSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := strings.TrimSpace(string(b))
	if len(s) < 16 {
		return nil, fmt.Errorf("the secret in %s is shorter than 16 characters", path)
	}
	return []byte(s), nil
}

// newDispatcher builds the webhook dispatcher of the configuration (nil when no webhook is
// configured), sending from the outbox.
func newDispatcher(n NotificationsConfig, outbox notify.Outbox, reg prometheus.Registerer, log *slog.Logger) (*notify.Dispatcher, error) {
	if len(n.Webhooks) == 0 {
		return nil, nil
	}
	var hooks []notify.Webhook
	for i, w := range n.Webhooks {
		secret, err := readWebhookSecret(w.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("notifications.webhooks[%d].secret_file: %w", i, err)
		}
		hooks = append(hooks, notify.Webhook{URL: w.URL, Format: w.Format, Secret: secret})
	}
	return notify.New(notify.Options{Webhooks: hooks, Outbox: outbox, Registerer: reg, Logger: log})
}
