package main

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestRedisBounds: every client honours context deadlines, retries nothing itself (a late
// answer is an unknown outcome, see redisBounds), and no command may take more than a request
// deadline, whatever the configuration says.
func TestRedisBounds(t *testing.T) {
	b := newRedisBounds(2*time.Second, 5*time.Second, 300*time.Millisecond, 0)
	u := b.universal(&redis.UniversalOptions{})
	if !u.ContextTimeoutEnabled || u.MaxRetries != -1 || u.DialTimeout != 2*time.Second || u.ReadTimeout != 300*time.Millisecond ||
		u.WriteTimeout != 2*time.Second || u.PoolTimeout != 2*time.Second || u.MaxRetryBackoff > 100*time.Millisecond {
		t.Errorf("universal options %+v", u)
	}
	o := newRedisBounds(0, 0, 0, 0).single(&redis.Options{})
	if !o.ContextTimeoutEnabled || o.MaxRetries != -1 || o.ReadTimeout != 2*time.Second || o.DialTimeout != 2*time.Second {
		t.Errorf("single options with defaults %+v", o)
	}
}

// TestRequestTimeoutValidated: request_timeout must be positive and leave the HTTP write
// timeout room for recording a signed certificate.
func TestRequestTimeoutValidated(t *testing.T) {
	for _, tt := range []struct {
		d     time.Duration
		valid bool
	}{{0, true}, {2 * time.Second, true}, {25 * time.Second, true}, {-time.Second, false}, {26 * time.Second, false}, {time.Minute, false}} {
		c := &Config{RequestTimeout: tt.d}
		err := c.Validate()
		bad := err != nil && strings.Contains(err.Error(), "request_timeout")
		if bad == tt.valid {
			t.Errorf("request_timeout %v: %v", tt.d, err)
		}
	}
	if got := (&Config{}).requestTimeout(); got != 2*time.Second {
		t.Errorf("default request timeout %v", got)
	}
}

// TestShutdownTimeoutValidated: shutdown_timeout is unset (the default) or positive and at
// most the HTTP write timeout; the refusal names the key and the bound.
func TestShutdownTimeoutValidated(t *testing.T) {
	for _, tt := range []struct {
		d     time.Duration
		valid bool
	}{{0, true}, {time.Second, true}, {httpWriteTimeout, true}, {-time.Second, false}, {httpWriteTimeout + time.Nanosecond, false}, {time.Hour, false}} {
		err := (&Config{ShutdownTimeout: tt.d}).Validate()
		bad := err != nil && strings.Contains(err.Error(), "shutdown_timeout")
		if bad == tt.valid {
			t.Errorf("shutdown_timeout %v: %v", tt.d, err)
		}
		if bad && !strings.Contains(err.Error(), httpWriteTimeout.String()) {
			t.Errorf("shutdown_timeout %v: the refusal does not name the bound: %v", tt.d, err)
		}
	}
}
