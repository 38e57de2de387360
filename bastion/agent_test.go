package bastion_test

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/krl"
	"github.com/sshca/sshca/store"
)

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, what, cond)
}

func installedKRL(t *testing.T, path string) *krl.KRL {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	k, err := krl.Parse(b)
	if err != nil {
		t.Fatalf("installed KRL is unreadable: %v", err)
	}
	return k
}

// krlServer serves whatever KRL bytes it is given, over TLS.
type krlServer struct {
	mu   sync.Mutex
	body []byte
	ver  int
}

func (s *krlServer) set(b []byte, ver int) { s.mu.Lock(); s.body, s.ver = b, ver; s.mu.Unlock() }

func (s *krlServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.URL.Path {
	case "/v1/krl":
		etag := `"` + strconv.Itoa(s.ver) + `"`
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		_, _ = w.Write(s.body)
	case "/v1/ca/user.pub":
		_, _ = w.Write([]byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl sshca-user-ca\n"))
	}
}

// tlsSource serves h over TLS (closed at the end of the test) and returns an HTTPS source
// that pins the server's certificate.
func tlsSource(t *testing.T, h http.Handler) (*bastion.HTTPSource, *httptest.Server) {
	t.Helper()
	ts := httptest.NewTLSServer(h)
	t.Cleanup(ts.Close)
	caFile := filepath.Join(t.TempDir(), "server-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := bastion.NewHTTPSource("http://"+ts.Listener.Addr().String(), caFile); err == nil {
		t.Fatal("a plain-HTTP source was accepted for an unsigned KRL")
	}
	src, err := bastion.NewHTTPSource(ts.URL, caFile)
	if err != nil {
		t.Fatal(err)
	}
	return src, ts
}

func TestAgentHTTPSource(t *testing.T) {
	srv := &krlServer{}
	src, ts := tlsSource(t, srv)
	dir := t.TempDir()
	key := testenv.PublicKey(t)
	encode := func(version uint64, serials ...uint64) []byte {
		k := &krl.KRL{Version: version, GeneratedDate: time.Now()}
		k.RevokeSerials(key, serials...)
		b, err := k.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	srv.set(encode(5, 1, 2), 5)
	krlPath := filepath.Join(dir, "sshca.krl")
	var (
		seenMu sync.Mutex
		seen   []uint64 // versions handed to OnKRL (lockdown in HTTPS mode)
	)
	onKRL := func(k *krl.KRL) { seenMu.Lock(); seen = append(seen, k.Version); seenMu.Unlock() }
	a, err := bastion.NewAgent(bastion.Options{KRLPath: krlPath, UserCAPath: filepath.Join(dir, "ca.pub"), HTTP: src, PollEvery: 20 * time.Millisecond, OnKRL: onKRL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "version 5 is installed", func() bool { k := installedKRL(t, krlPath); return k != nil && k.Version == 5 })
	if b, _ := os.ReadFile(filepath.Join(dir, "ca.pub")); len(b) == 0 {
		t.Error("the trusted CA keys were not written")
	}

	// An older KRL is never installed over a newer one; an unreadable one never at all.
	srv.set(encode(3, 1), 3)
	time.Sleep(200 * time.Millisecond)
	if k := installedKRL(t, krlPath); k.Version != 5 {
		t.Fatalf("version %d installed over 5", k.Version)
	}
	srv.set([]byte("not a KRL"), 6)
	time.Sleep(200 * time.Millisecond)
	if k := installedKRL(t, krlPath); k.Version != 5 {
		t.Fatalf("installed version %d after garbage", k.Version)
	}
	if st := a.Status(); st.Connected {
		t.Errorf("status after an unreadable KRL: %+v", st)
	}
	srv.set(encode(7, 1, 2, 3), 7)
	waitUntil(t, "version 7 is installed", func() bool { return installedKRL(t, krlPath).Version == 7 })
	// OnKRL runs just after the file is in place.
	waitUntil(t, "OnKRL sees version 7", func() bool { seenMu.Lock(); defer seenMu.Unlock(); return slices.Contains(seen, 7) })
	seenMu.Lock()
	if !slices.Equal(seen, []uint64{5, 7}) {
		t.Errorf("OnKRL saw versions %v, want each newer installed one: [5 7]", seen)
	}
	seenMu.Unlock()

	// Fail static: with the source gone, the last good KRL stays and health says so.
	ts.Close()
	waitUntil(t, "the agent notices", func() bool { return !a.Status().Connected })
	if k := installedKRL(t, krlPath); k.Version != 7 {
		t.Fatalf("KRL changed without a source: %d", k.Version)
	}
}

func TestAgentWritesEmptyKRLBeforeSSHD(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sshca.krl")
	a, err := bastion.NewAgent(bastion.Options{KRLPath: path, HTTP: &bastion.HTTPSource{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Prepare(); err != nil {
		t.Fatal(err)
	}
	if k := installedKRL(t, path); k == nil || len(k.Certificates) != 0 {
		t.Fatalf("no valid empty KRL: %+v", k)
	}
	out := testenv.Run(t, testenv.Need(t, "ssh-keygen"), "-Q", "-l", "-f", path)
	if out == "" {
		t.Error("ssh-keygen cannot list the empty KRL")
	}
}

// TestAgentRedisFailStatic: the agent follows Redis; with redis-server stopped it keeps the
// KRL and reports itself disconnected; back, it catches up with what it missed.
func TestAgentRedisFailStatic(t *testing.T) {
	r := testenv.StartRedisPersistent(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer rdb.Close()
	db := store.NewRedis(rdb, store.RedisOptions{})
	ctx := context.Background()
	key := testenv.PublicKey(t)
	if err := db.RegisterCA(ctx, key); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	revoke := func(serial string) {
		t.Helper()
		if _, err := db.Revoke(ctx, key, []ca.RevocationEntry{{Kind: ca.RevokedSerial, Value: serial, Expiry: exp}}); err != nil {
			t.Fatal(err)
		}
	}
	revoke("1")
	path := filepath.Join(t.TempDir(), "sshca.krl")
	agentRDB := redis.NewClient(&redis.Options{Addr: r.Addr, DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second})
	defer agentRDB.Close()
	a, err := bastion.NewAgent(bastion.Options{KRLPath: path, Feed: store.NewRedis(agentRDB, store.RedisOptions{})})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- a.Run(actx) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, "version 1", func() bool { k := installedKRL(t, path); return k != nil && k.Version == 1 })
	revoke("2")
	waitUntil(t, "version 2", func() bool { return installedKRL(t, path).Version == 2 })

	r.Stop()
	waitUntil(t, "the agent reports the source lost", func() bool { return !a.Status().Connected })
	if k := installedKRL(t, path); k.Version != 2 {
		t.Fatalf("KRL changed while the source was down: %d", k.Version)
	}
	r.Start()
	revoke("3")
	waitUntil(t, "it catches up after the restart", func() bool {
		k := installedKRL(t, path)
		return k.Version == 3 && len(k.Certificates) == 1 && len(k.Certificates[0].Serials) == 1 && k.Certificates[0].Serials[0].Hi == 3
	})
}
