package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"
)

// TestDocumentedDefaults: the defaults that deploy/config.example.yaml shows (as values, or as
// commented-out lines such as "# request_timeout: 2s") and that the README names are those
// of defaultConfig, which serve applies.
func TestDocumentedDefaults(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// Keys the example shows commented out, at their default, since setting them is rare.
	commented := regexp.MustCompile(`(?m)^(\s*)# ((request_timeout|bundle_poll): )`)
	if n := len(commented.FindAll(b, -1)); n != 2 {
		t.Fatalf("config.example.yaml: %d commented-out request_timeout/bundle_poll lines, want 2", n)
	}
	var ex Config
	if err := yaml.Unmarshal(commented.ReplaceAll(b, []byte("$1$2")), &ex); err != nil {
		t.Fatal(err)
	}
	d := defaultConfig()
	type shown struct {
		DiagListen                string
		RequestTimeout, Poll      time.Duration
		TrustRefresh, KeysRefresh time.Duration
		Limits                    LimitsConfig
	}
	got := shown{ex.DiagListen, ex.RequestTimeout, ex.Policy.BundlePoll, ex.Keyring.TrustRefresh, ex.Keyring.Refresh, ex.Limits}
	want := shown{d.DiagListen, d.RequestTimeout, d.Policy.BundlePoll, d.Keyring.TrustRefresh, d.Keyring.Refresh, d.Limits}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("deploy/config.example.yaml shows other defaults than defaultConfig (-defaults +example):\n%s", diff)
	}

	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(readme)), " ")
	for _, c := range []struct {
		pattern string
		want    func(string) bool
	}{
		{"`request_timeout`, default ([0-9a-z]+)\\)", func(s string) bool { v, err := time.ParseDuration(s); return err == nil && v == d.RequestTimeout }},
		{"`diag_listen` \\(default `([^`]+)`", func(s string) bool { return s == d.DiagListen }},
		{"`limits.identity_block` \\(([0-9]+) h by default\\)", func(s string) bool {
			v, err := time.ParseDuration(s + "h")
			return err == nil && v == d.Limits.IdentityBlock
		}},
	} {
		m := regexp.MustCompile(c.pattern).FindStringSubmatch(text)
		if m == nil {
			t.Errorf("README no longer says %s", c.pattern)
		} else if !c.want(m[1]) {
			t.Errorf("README: %q is not the default", m[0])
		}
	}
}

// TestWithDefaults: serve fills every unset limit, timeout and interval from defaultConfig,
// keeps every value that is set, and keeps diag_listen "" (the diagnostics listener off).
func TestWithDefaults(t *testing.T) {
	d := defaultConfig()
	if got := (Config{}).withDefaults(); !cmp.Equal(got, Config{RequestTimeout: d.RequestTimeout, Policy: d.Policy, Keyring: d.Keyring, Limits: d.Limits, Recordings: d.Recordings}) {
		t.Errorf("empty config with defaults: %+v\nwant %+v", got, d)
	}
	set := Config{RequestTimeout: 3 * time.Second, Policy: PolicyConfig{BundlePoll: time.Minute},
		Recordings: RecordingsConfig{Retention: 48 * time.Hour},
		Keyring:    KeyringConfig{TrustRefresh: time.Hour, Refresh: time.Second},
		Limits: LimitsConfig{MaxUserTTL: time.Hour, MaxHostTTL: 2 * time.Hour, MaxPrincipals: 3, IdentityBlock: 4 * time.Hour,
			AccessRequestTimeout: 5 * time.Minute, MaxAccessWindow: 6 * time.Hour,
			Rate: RateConfig{PerAddress: 0.2, Burst: 7, PerIdentity: 0.5, IdentityBurst: 8, KRLPerAddress: 9, KRLBurst: 10,
				InFlight: 11, KRLInFlight: 12, LongPollsPerAddress: 13, KRLLongPolls: 16, RequestLongPolls: 17, MaxEntries: 14, Idle: 15 * time.Minute}}}
	if got := set.withDefaults(); !cmp.Equal(got, set) {
		t.Errorf("a set value was replaced by its default:\n%s", cmp.Diff(set, got))
	}
	one := Config{Limits: LimitsConfig{Rate: RateConfig{PerIdentity: 0.5}}}.withDefaults()
	if one.Limits.Rate.PerIdentity != 0.5 || one.Limits.Rate.PerAddress != d.Limits.Rate.PerAddress {
		t.Errorf("per_identity alone: %+v", one.Limits.Rate)
	}
}
