package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestServeSentinelPassword: `sshca serve` with redis.master_name, on three Sentinels started
// with a requirepass of their own (real redis-server), refuses to start when redis.sentinel_password
// is missing or wrong, with the error the commands give ("the Sentinels refused their
// credentials ... set redis.sentinel_password"), and so does `serve --check-config`; the
// readiness probe of a replica whose Sentinels refuse it says the same rather than "write
// probe refused"; with the right password it starts and is ready. No error, log line or output
// shows the password, right or wrong. Before, serve started and stayed unready, its log and
// /readyz saying the Sentinels were unreachable.
func TestServeSentinelPassword(t *testing.T) {
	const secret = "s3ntinel-only-Pa55"
	s := testenv.StartRedisSentinelAuth(t, secret)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, "127.0.0.1:1", identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.Redis = RedisConfig{Addrs: s.Sentinels, MasterName: testenv.SentinelMaster, WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond,
		DialTimeout: time.Second, ReadTimeout: time.Second}
	const want = "the Sentinels refused their credentials"
	noSecret := func(what, out string) {
		t.Helper()
		if strings.Contains(out, secret) {
			t.Errorf("%s shows the Sentinels' password:\n%s", what, out)
		}
	}

	for _, pw := range []string{"", "not-" + secret} {
		cfg.Redis.SentinelPassword = pw
		var logged testenv.SyncBuffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		ready, errc := make(chan string, 1), make(chan error, 1)
		go func() { errc <- serve(ctx, cfg, slog.New(slog.NewTextHandler(&logged, nil)), ready) }()
		var err error
		select {
		case err = <-errc:
		case <-ready:
			cancel()
			<-errc
			t.Fatalf("serve with Sentinel password %q started", pw)
		}
		cancel()
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "redis.sentinel_password") {
			t.Fatalf("serve with Sentinel password %q: %v; want %q naming redis.sentinel_password", pw, err, want)
		}
		noSecret("serve's error and log", err.Error()+logged.String())
		out, _, err := checkCLI(t, writeConfig(t, cfg), false)
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("serve --check-config with Sentinel password %q: %v; want %q\n%s", pw, err, want, out)
			t.FailNow()
		}
		noSecret("serve --check-config", out)
	}

	// Readiness: the probe through Sentinels that refuse its credentials.
	refused := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: testenv.SentinelMaster, SentinelAddrs: s.Sentinels, MaxRetries: -1})
	defer refused.Close()
	ctx := context.Background()
	if err := (redisProbe{rdb: refused, prefix: "sshca", sentinels: "redis"}).Check(ctx); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("the readiness probe through Sentinels that refuse it: %v; want %q", err, want)
	}

	cfg.Redis.SentinelPassword = secret
	base := startServe(t, cfg)
	readyz := func() (int, string) {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := readyz()
	for deadline := time.Now().Add(20 * time.Second); code != http.StatusOK && time.Now().Before(deadline); code, body = readyz() {
		time.Sleep(100 * time.Millisecond)
	}
	if code != http.StatusOK {
		t.Fatalf("serve with the Sentinels' password is not ready: %d %s", code, body)
	}
}
