package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestServeRefusesOneKeyForBothCAs: user_ca and host_ca naming one key by two URIs (another
// path to the same file, which Config.validate's comparison of the URIs lets through) are
// refused at start, naming both settings, before anything is registered in the store: started,
// the host CA's registration took the user CA's scope out of the user KRL's CA set (every
// user revocation gone from bastions' KRLs), and each CA's certificates were the other's. A
// PIN in a URI is not shown. Two keys of their own still start (the check's other side).
func TestServeRefusesOneKeyForBothCAs(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rdb.Close() })
	iss := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})

	userPath := strings.TrimPrefix(cfg.UserCA.Key, "softkms:path=")
	cfg.HostCA.Key = "softkms:path=" + filepath.Join(filepath.Dir(userPath), ".", "..", filepath.Base(filepath.Dir(userPath)), filepath.Base(userPath)) + ";pin-value=s3cret"
	if err := cfg.validate(false); err != nil {
		t.Fatalf("the config names two URIs, which validate cannot tell apart: %v", err)
	}
	s, err := buildServer(ctx, cfg, testLog(t))
	if err == nil {
		s.close()
		cas, _ := rdb.SMembers(ctx, store.Keys{}.CAs()).Result()
		t.Fatalf("serve started with one key as user and host CA; the user KRL's CA set is now %q", cas)
	}
	if !strings.Contains(err.Error(), "user_ca and host_ca name the same key") || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("serve with one key for both CAs: %v; want a refusal naming user_ca and host_ca, without the PIN", err)
	}
	if n := rdb.Exists(ctx, store.Keys{}.CAs(), store.Keys{}.HostCAs()).Val(); n != 0 {
		t.Fatalf("the refused start registered CA keys (%d sets)", n)
	}

	cfg = serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})
	s, err = buildServer(ctx, cfg, testLog(t))
	if err != nil {
		t.Fatalf("serve with two keys of their own: %v", err)
	}
	s.close()
}
