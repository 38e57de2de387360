package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/identity/devissuer"
	"github.com/sshca/sshca/internal/testenv"
)

// heldIssuer is a development OIDC issuer on loopback whose key set (/oidc/jwks) is held until
// release: the server fetches it on the first token it verifies, so a request for a
// certificate stays in flight inside the server for as long as the test wants.
type heldIssuer struct {
	*devissuer.Issuer
	asked   chan struct{} // closed when the key set was first asked for
	release chan struct{}
	once    sync.Once
}

func startHeldIssuer(t *testing.T, audience string) *heldIssuer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	iss, err := devissuer.New("http://"+l.Addr().String()+"/oidc", devissuer.Options{Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	h := &heldIssuer{Issuer: iss, asked: make(chan struct{}), release: make(chan struct{})}
	oidc := http.StripPrefix("/oidc", iss.Handler())
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/oidc/jwks" {
			h.once.Do(func() { close(h.asked) })
			<-h.release
		}
		oidc.ServeHTTP(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-h.release:
		default:
			close(h.release)
		}
	})
	return h
}

// TestServeShutdownOrder: `sshca serve` with every background loop it has (revocation
// follower, policy directory watch, keyring refresh of both CAs, webhook outbox, diagnostics
// listener) against a real redis-server, stopped while a certificate request is in flight.
// The request completes with 200 and a certificate (it writes to Redis during the drain); a
// new connection is refused as soon as shutdown begins; serve returns nil only after the
// answer; the log shows the order (not accepting, drained, every loop ended, Redis closed) and
// no command on a closed client; and no goroutine of the server is left.
func TestServeShutdownOrder(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startHeldIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	dir := t.TempDir()
	for _, f := range []string{"sshca.rego", "sshca_test.rego", "data.json"} {
		writeFile(t, filepath.Join(dir, f), readFile(t, filepath.Join("..", "..", "policies", f)))
	}
	cfg.Policy.Dir = dir
	cfg.Keyring = KeyringConfig{Enabled: true, KMS: "softkms:", KeyDir: t.TempDir()}
	cfg.DiagListen = "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	hooks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	t.Cleanup(hooks.Close)
	secret := filepath.Join(t.TempDir(), "hook.secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Notifications = NotificationsConfig{Webhooks: []WebhookConfig{{URL: hooks.URL + "/hook", SecretFile: secret}}}
	// Room for the held request: the key set is released once the test has seen the listener
	// refuse connections, well within this.
	cfg.RequestTimeout = 10 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	token, err := idp.Mint(map[string]any{"sub": "alice", "preferred_username": "alice"})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"public_key": ` + jsonString(readFile(t, keygen(t, t.TempDir(), "user")+".pub")) + `}`
	client := &http.Client{Transport: &http.Transport{}}
	// Everything the test itself started (redis-server's waiter, the issuer, the webhook
	// receiver) is running now: what is left after serve returns beyond these is the server's.
	leaks := goleak.IgnoreCurrent()

	logs := &logCapture{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, errc := serveLogged(t, ctx, cfg, logs)

	type answer struct {
		code int
		body []byte
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/certs/user", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		answered <- answer{resp.StatusCode, b, err}
	}()
	select {
	case <-idp.asked: // the request is in the server, verifying its token
	case a := <-answered:
		t.Fatalf("the request was answered (%d %s %v) before the server fetched the issuer's keys", a.code, a.body, a.err)
	case <-time.After(30 * time.Second):
		t.Fatal("the server never asked the issuer for its keys")
	}
	cancel()

	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("new connections still accepted 5s after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-errc:
		t.Fatalf("serve returned (%v) with a request in flight", err)
	case a := <-answered:
		t.Fatalf("the request in flight was answered (%d %s %v) while the issuer's keys were held", a.code, a.body, a.err)
	default:
	}

	close(idp.release)
	a := <-answered
	if a.err != nil || a.code != http.StatusOK || !strings.Contains(string(a.body), "-cert-v01@openssh.com ") {
		t.Errorf("request in flight during shutdown: %d %s %v, want 200 and a certificate", a.code, a.body, a.err)
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("serve after SIGTERM: %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not return within 30s of the last answer")
	}

	checkShutdownLog(t, logs.String(), "revocation follower", "policy watch", "keyring refresh (user CA)",
		"keyring refresh (host CA)", "notification outbox", "diagnostics listener")

	// Idle keep-alive connections are pooled, not leaked: the test's own client and the
	// verifier's (http.DefaultTransport) close theirs.
	client.CloseIdleConnections()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	goleak.VerifyNone(t, leaks)
}

// serveLogged runs serve with cfg until ctx ends, its debug log in logs, and returns its
// address once it listens and the channel that gets serve's result.
func serveLogged(t *testing.T, ctx context.Context, cfg *Config, logs *logCapture) (string, <-chan error) {
	t.Helper()
	ready, errc := make(chan string, 1), make(chan error, 1)
	go func() {
		errc <- serve(ctx, cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ready)
	}()
	select {
	case addr := <-ready:
		return addr, errc
	case err := <-errc:
		t.Fatalf("serve: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not start within 60s")
	}
	return "", nil
}

// checkShutdownLog checks the server's JSON log lines for the shutdown order: not accepting,
// then drained, then each of loops ended, then Redis closed; and that nothing ran a Redis
// command on the closed client.
func checkShutdownLog(t *testing.T, log string, loops ...string) {
	t.Helper()
	at := map[string]int{}
	n := 0
	for line := range strings.SplitSeq(log, "\n") {
		var rec struct {
			Msg  string `json:"msg"`
			Loop string `json:"loop"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		n++
		key := rec.Msg
		if rec.Loop != "" {
			key += ": " + rec.Loop
		}
		if _, seen := at[key]; !seen {
			at[key] = n
		}
		if strings.Contains(line, "client is closed") {
			t.Errorf("a Redis command ran on the closed client: %s", line)
		}
	}
	order := []string{"shutdown: not accepting connections; draining the requests in flight", "shutdown: requests drained; stopping the background loops"}
	for _, l := range loops {
		order = append(order, "background loop ended: "+l)
	}
	order = append(order, "shutdown: background loops ended; closing Redis", "shutdown: Redis closed")
	drained, closing := at[order[1]], at[order[len(order)-2]]
	for i, step := range order {
		pos, ok := at[step]
		switch {
		case !ok:
			t.Errorf("the log has no %q line", step)
		case i == 1 && pos < at[order[0]]:
			t.Errorf("%q logged before %q", step, order[0])
		case i >= 2 && i < len(order)-2 && (pos < drained || pos > closing):
			t.Errorf("%q logged outside the step that stops the loops (after the drain, before Redis closes)", step)
		case i == len(order)-1 && pos < closing:
			t.Errorf("%q logged before the loops ended", step)
		}
	}
	if t.Failed() {
		t.Logf("server log:\n%s", log)
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b)
}

// agentLoops are the flags of a bastion agent on redis-server with every loop the flags can
// turn on besides discovery (which needs a CA server): the revocation sources, the sshd log
// follower, the session recorder and the health listener.
func agentLoops(t *testing.T, redisAddr string) agentFlags {
	dir := t.TempDir()
	return agentFlags{redis: redisTarget{url: "redis://" + redisAddr}, krlPath: filepath.Join(dir, "sshca.krl"), userCA: filepath.Join(dir, "user_ca.pub"),
		health: "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)), sshdLog: filepath.Join(dir, "sshd.log"),
		recordSocket: filepath.Join(dir, "record.sock"), recordings: filepath.Join(dir, "recordings"),
		recordSessionCap: 1 << 20, recordHostCap: 1 << 24, poll: time.Second, caRefresh: time.Second}
}

// TestAgentStopsEveryLoop: the bastion agent's loops end with its context, each before the
// agent returns (and so before its Redis client closes, deferred in runAgent), the health and
// record sockets stop answering, and no goroutine is left.
func TestAgentStopsEveryLoop(t *testing.T) {
	r := testenv.StartRedis(t)
	f := agentLoops(t, r.Addr)
	leaks := goleak.IgnoreCurrent()
	logs := &logCapture{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready, done := make(chan *bastion.Agent, 1), make(chan error, 1)
	go func() {
		done <- runAgent(ctx, f, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), ready)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("agent: %v", err)
	}
	health := &http.Client{Transport: &http.Transport{}}
	if resp, err := health.Get("http://" + f.health + "/healthz"); err != nil {
		t.Fatalf("health listener: %v", err)
	} else {
		resp.Body.Close()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("agent after SIGTERM: %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not stop within 30s")
	}
	if c, err := net.Dial("tcp", f.health); err == nil {
		c.Close()
		t.Error("the health listener still accepts after the agent returned")
	}
	if c, err := net.Dial("unix", f.recordSocket); err == nil {
		c.Close()
		t.Error("the record socket still accepts after the agent returned")
	}
	log := logs.String()
	stopped := strings.Index(log, `"msg":"bastion agent stopped"`)
	if stopped < 0 {
		t.Errorf("no \"bastion agent stopped\" line:\n%s", log)
	}
	for _, l := range []string{"revocation sources", "sshd log follower", "session recorder", "health listener"} {
		if i := strings.Index(log, `"msg":"background loop ended","loop":"`+l+`"`); i < 0 || i > stopped {
			t.Errorf("loop %q did not end before the agent returned:\n%s", l, log)
		}
	}
	health.CloseIdleConnections()
	goleak.VerifyNone(t, leaks)
}

// TestAgentEndsWhenALoopFails: a loop that cannot go on (the session recorder whose
// recordings directory cannot be made) ends the agent with an error that names it, after a
// log line at error level that says so, and the other loops end with it.
func TestAgentEndsWhenALoopFails(t *testing.T) {
	r := testenv.StartRedis(t)
	f := agentLoops(t, r.Addr)
	notDir := filepath.Join(t.TempDir(), "file")
	writeFile(t, notDir, "a file, not a directory\n")
	f.recordings = filepath.Join(notDir, "recordings")
	leaks := goleak.IgnoreCurrent()
	logs := &logCapture{}
	done := make(chan error, 1)
	go func() {
		done <- runAgent(context.Background(), f, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), nil)
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent went on for 30s without its session recorder")
	}
	if err == nil || !strings.Contains(err.Error(), "session recorder") || !strings.Contains(err.Error(), "recordings directory") {
		t.Errorf("agent = %v, want the session recorder's error", err)
	}
	log := logs.String()
	if !strings.Contains(log, `"level":"ERROR","msg":"a background loop failed; stopping","loop":"session recorder"`) {
		t.Errorf("no error line names the failed loop:\n%s", log)
	}
	for _, l := range []string{"revocation sources", "sshd log follower", "health listener"} {
		if !strings.Contains(log, `"msg":"background loop ended","loop":"`+l+`"`) {
			t.Errorf("loop %q did not end with the failed one:\n%s", l, log)
		}
	}
	goleak.VerifyNone(t, leaks)
}

// TestServeShutdownTimeoutCutsOff: a request still in flight when shutdown_timeout (1s here)
// has passed is cut off: serve returns an error that names shutdown_timeout, the client's
// connection is closed without an answer, and the loops still end before Redis closes.
func TestServeShutdownTimeoutCutsOff(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startHeldIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.DiagListen = ""
	cfg.RequestTimeout, cfg.ShutdownTimeout = 10*time.Second, time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	token, err := idp.Mint(map[string]any{"sub": "alice", "preferred_username": "alice"})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"public_key": ` + jsonString(readFile(t, keygen(t, t.TempDir(), "user")+".pub")) + `}`
	logs := &logCapture{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, errc := serveLogged(t, ctx, cfg, logs)
	answered := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/certs/user", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			err = fmt.Errorf("answered %d %s", resp.StatusCode, b)
		}
		answered <- err
	}()
	select {
	case <-idp.asked:
	case err := <-answered:
		t.Fatalf("the request ended (%v) before the server fetched the issuer's keys", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the server never asked the issuer for its keys")
	}
	cancel()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "shutdown_timeout") || !strings.Contains(err.Error(), "cut off") {
			t.Errorf("serve with a request held past shutdown_timeout = %v, want an error naming shutdown_timeout", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not return within 15s with shutdown_timeout 1s")
	}
	select {
	case err := <-answered:
		if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "connection reset") {
			t.Errorf("the request cut off got %v, want its connection closed without an answer", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the request cut off still waits 5s after serve returned")
	}
	log := logs.String()
	notDrained := strings.Index(log, `"msg":"shutdown: requests not drained; stopping the background loops"`)
	ended := strings.Index(log, `"msg":"background loop ended","loop":"revocation follower"`)
	closed := strings.Index(log, `"msg":"shutdown: Redis closed"`)
	if notDrained < 0 || ended < notDrained || closed < ended {
		t.Errorf("shutdown order after a cut-off drain: not drained at %d, follower ended at %d, Redis closed at %d:\n%s", notDrained, ended, closed, log)
	}
}

// buildTestServer builds the server of serveConfig on a real redis-server, with its log.
func buildTestServer(t *testing.T) (*server, *logCapture) {
	t.Helper()
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.DiagListen = ""
	logs := &logCapture{}
	s, err := buildServer(context.Background(), cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	return s, logs
}

// TestServeStopsWhenALoopFails: a background loop that returns an error (one the server
// cannot go on without) stops the whole server, SIGTERM or not: the listener closes, the
// other loops end, Redis closes, the error names the loop, and an error line says why.
func TestServeStopsWhenALoopFails(t *testing.T) {
	s, logs := buildTestServer(t)
	s.loops = append(s.loops, loop{"test loop", func(ctx context.Context) error {
		return errors.New("cannot go on")
	}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	done := make(chan error, 1)
	go func() { done <- s.run(context.Background(), l, s.api, nil) }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the server went on for 30s after a loop failed")
	}
	if err == nil || !strings.Contains(err.Error(), "test loop: cannot go on") {
		t.Errorf("run = %v, want the failed loop's error", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("the listener still accepts after the server stopped")
	}
	log := logs.String()
	if !strings.Contains(log, `"level":"ERROR","msg":"a background loop failed; stopping","loop":"test loop"`) {
		t.Errorf("no error line names the failed loop:\n%s", log)
	}
	// Shutdown logs "not accepting" from its own goroutine: with no request in flight it may
	// come after the drain's line, so only the steps run itself orders are checked.
	drained := strings.Index(log, `"msg":"shutdown: requests drained; stopping the background loops"`)
	ended := strings.Index(log, `"msg":"background loop ended","loop":"revocation follower"`)
	closed := strings.Index(log, `"msg":"shutdown: Redis closed"`)
	if drained < 0 || ended < drained || closed < ended {
		t.Errorf("order after a loop failed: drained at %d, follower ended at %d, Redis closed at %d:\n%s", drained, ended, closed, log)
	}
}

// TestServeStopsWhenTheListenerFails: a listener that fails (closed under the server here)
// stops the server with the listener's error, not a drain's, after its loops and with Redis
// closed last.
func TestServeStopsWhenTheListenerFails(t *testing.T) {
	s, logs := buildTestServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.run(context.Background(), l, s.api, func() { l.Close() }) }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the server went on for 30s without its listener")
	}
	if err == nil || !strings.Contains(err.Error(), "serve:") || strings.Contains(err.Error(), "shutdown_timeout") {
		t.Errorf("run = %v, want the listener's error", err)
	}
	log := logs.String()
	failed := strings.Index(log, `"msg":"the listener failed; stopping the background loops"`)
	ended := strings.Index(log, `"msg":"background loop ended","loop":"revocation follower"`)
	closed := strings.Index(log, `"msg":"shutdown: Redis closed"`)
	if failed < 0 || ended < failed || closed < ended {
		t.Errorf("order after a listener failure: failed at %d, follower ended at %d, Redis closed at %d:\n%s", failed, ended, closed, log)
	}
}

// TestServeWaitsForHandlersCutOff: when shutdown_timeout (1s here) cuts requests off,
// http.Server.Close does not wait for their handlers, and Redis used to close under them: a
// handler still finishing a signed certificate's records then failed with "redis: client is
// closed". Now run cancels the handlers' contexts and waits for them (logged) before the loops
// stop and Redis closes: a handler that ignores its context for a while (as the records of a
// signed certificate do) still writes to the real redis-server, one that waits on its context
// ends at once, the error says requests were cut off, and no goroutine is left.
func TestServeWaitsForHandlersCutOff(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	cfg.DiagListen = ""
	leaks := goleak.IgnoreCurrent()
	logs := &logCapture{}
	s, err := buildServer(context.Background(), cfg, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	s.drain = time.Second
	entered := make(chan string, 2)
	release := make(chan struct{})
	recorded, ctxEnded := make(chan error, 1), make(chan error, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /signed", func(w http.ResponseWriter, r *http.Request) {
		entered <- "signed"
		<-release
		// What a signed certificate still records, under a bound of its own (ca.SignedCertTimeout).
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Second)
		defer cancel()
		recorded <- s.rdb.Set(ctx, "sshca:test:cut-off-record", "kept", time.Minute).Err()
	})
	mux.HandleFunc("POST /waiting", func(w http.ResponseWriter, r *http.Request) {
		entered <- "waiting"
		<-r.Context().Done()
		ctxEnded <- r.Context().Err()
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.run(ctx, l, mux, nil) }()
	hc := &http.Client{Transport: &http.Transport{}}
	cutOff := make(chan error, 2)
	for _, path := range []string{"/signed", "/waiting"} {
		go func() {
			resp, err := hc.Post("http://"+l.Addr().String()+path, "application/json", nil)
			if err == nil {
				resp.Body.Close()
				err = fmt.Errorf("answered %d", resp.StatusCode)
			}
			cutOff <- err
		}()
	}
	for range 2 {
		select {
		case <-entered:
		case <-time.After(30 * time.Second):
			t.Fatal("the requests never reached their handlers")
		}
	}
	cancel()
	// Release the held handler once shutdown has gone past the cut-off: it waits for the
	// handlers, or (the fault) it has closed Redis.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		log := logs.String()
		if strings.Contains(log, "waiting for their handlers") || strings.Contains(log, `"msg":"shutdown: Redis closed"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shutdown never got past the cut-off:\n%s", log)
		}
	}
	close(release)
	if err := <-recorded; err != nil {
		t.Errorf("the handler cut off could not finish its records: %v", err)
	}
	if err := <-ctxEnded; !errors.Is(err, context.Canceled) {
		t.Errorf("the waiting handler's context: %v, want cancelled", err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "cut off") || strings.Contains(err.Error(), "still running") {
			t.Errorf("run = %v, want requests cut off, none left running", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return")
	}
	for range 2 {
		if err := <-cutOff; err == nil || strings.Contains(err.Error(), "answered") {
			t.Errorf("a request cut off: %v, want its connection closed", err)
		}
	}
	check := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer check.Close()
	if v, err := check.Get(context.Background(), "sshca:test:cut-off-record").Result(); err != nil || v != "kept" {
		t.Errorf("the record written after the cut-off: %q %v", v, err)
	}
	log := logs.String()
	waiting := strings.Index(log, `"msg":"shutdown: requests cut off; waiting for their handlers to end"`)
	ended := strings.Index(log, `"msg":"shutdown: the handlers of the requests cut off have ended"`)
	closed := strings.Index(log, `"msg":"shutdown: Redis closed"`)
	if waiting < 0 || ended < waiting || closed < ended || strings.Contains(log, "client is closed") {
		t.Errorf("order: waiting at %d, ended at %d, Redis closed at %d:\n%s", waiting, ended, closed, log)
	}
	hc.CloseIdleConnections()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	goleak.VerifyNone(t, leaks)
}
