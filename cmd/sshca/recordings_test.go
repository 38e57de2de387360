package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// writeRecording writes an agent's recording file (header, output chunks, an end) into dir,
// chained as the agent chains it, and returns its final hash.
func writeRecording(t *testing.T, dir, id string, h ca.RecordingHeader, output [][]byte, exit int) string {
	t.Helper()
	h.Version, h.ID = 1, id
	line, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.Write(append(line, '\n'))
	last := ca.RecordingChainStart(line)
	add := func(kind string, data []byte) {
		tt := int64(b.Len())
		last = ca.RecordingChainNext(last, kind, tt, data)
		l, _ := json.Marshal(ca.RecordingChunk{T: tt, Kind: kind, Data: data, Hash: hex.EncodeToString(last[:])})
		b.Write(append(l, '\n'))
	}
	for _, o := range output {
		add(ca.ChunkOutput, o)
	}
	if exit >= 0 {
		end, _ := json.Marshal(ca.RecordingEnd{Exit: exit})
		add(ca.ChunkEnd, end)
	}
	if err := os.WriteFile(filepath.Join(dir, id+".rec"), b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(last[:])
}

func randomChunks(n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size)
		_, _ = rand.Read(out[i])
	}
	return out
}

// TestRecordingsOnTheirOwnRedis: `serve` keeps shipped recordings on recordings.redis, never
// on redis: a session that prints megabytes (cat /dev/urandom) is cut at the session cap, its
// end and final hash still arrive, nothing of it lands on the main Redis, and certificates are
// issued meanwhile. With the recordings Redis at maxmemory, a batch gets a 503 that says so and
// how to make room, and issuance goes on; a reader lists and fetches what was kept.
func TestRecordingsOnTheirOwnRedis(t *testing.T) {
	main := testenv.StartRedis(t)
	conf := testenv.WriteFile(t, "recordings.conf", "maxmemory 4mb\nmaxmemory-policy noeviction\nappendonly no\nsave \"\"\n")
	recRedis := testenv.StartRedisConfig(t, conf)
	iss := startIssuer(t, "sshca")
	cfg := serveConfig(t, main.Addr, identity.IssuerConfig{IssuerURL: iss.URL(), Audiences: []string{"sshca"}})
	cfg.Recordings = RecordingsConfig{Redis: RedisConfig{Addrs: []string{recRedis.Addr}}, SessionCap: 256 << 10}
	cfg.RequestTimeout = 5 * time.Second
	base := startServe(t, cfg)
	ctx := context.Background()
	mint := func(claims map[string]any) string {
		tok, err := iss.Mint(claims)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	dir := t.TempDir()
	hostKeyPath := keygen(t, dir, "host")
	hc := issue(t, base, "host", mint(map[string]any{"sub": "ci-job", "groups": []string{"ci"}}),
		map[string]any{"public_key": readFile(t, hostKeyPath+".pub"), "hostnames": []string{"bastion1.dev.internal"}, "ttl": "1h"})
	writeFile(t, hostKeyPath+"-cert.pub", hc.Certificate+"\n")
	userKey := keygen(t, dir, "alice")
	issueAlice := func() {
		t.Helper()
		issue(t, base, "user", mint(map[string]any{"sub": "alice", "preferred_username": "alice"}), map[string]any{"public_key": readFile(t, userKey+".pub")})
	}

	recDir := filepath.Join(dir, "recordings")
	if err := os.MkdirAll(recDir, 0o700); err != nil {
		t.Fatal(err)
	}
	const noisy = "00000000000000000000000a"
	start := time.Now().UTC().Truncate(time.Second)
	final := writeRecording(t, recDir, noisy, ca.RecordingHeader{Start: start, User: "root", KeyID: "alice~00#5", Serial: "5",
		Kind: "exec", Command: "cat /dev/urandom"}, randomChunks(40, 64<<10), 130)
	sh := &bastion.RecordShipper{Dir: recDir, Client: client.New(base), Key: parseSigner(t, readFile(t, hostKeyPath)),
		Cert: func() (*ssh.Certificate, error) { return readCert(hostKeyPath + "-cert.pub") }}
	done := make(chan error, 1)
	shipped := time.Now()
	go func() { done <- sh.ShipOnce(ctx) }()
	issueAlice() // while the stream is shipped
	if err := <-done; err != nil {
		t.Fatalf("shipping the noisy session: %v", err)
	}
	shippedBy := time.Now()
	issueAlice()
	if st := readFile(t, filepath.Join(recDir, noisy+".shipped")); !strings.HasSuffix(strings.TrimSpace(st), "done") {
		t.Fatalf("shipping state %q, want done", st)
	}

	// Over HTTP: a renewal proof and a discovery proof ship nothing, a recording proof neither
	// renews nor reports, and a recording proof is good once.
	hostSigner, hostCert := parseSigner(t, readFile(t, hostKeyPath)), parseCert(t, hc.Certificate)
	const probe = "00000000000000000000000c"
	header, _ := json.Marshal(ca.RecordingHeader{Version: 1, ID: probe, Start: start, User: "root", Kind: "shell"})
	batch := append(header, '\n')
	post := func(path, token string, body []byte) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/x-ndjson")
		if !strings.HasPrefix(path, "/v1/recordings") {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	renewTok, _ := ca.SignRenewToken(hostSigner, hostCert, time.Now(), "r-"+probe)
	discoverTok, _ := ca.SignDiscoverProof(hostSigner, hostCert, "bastion1.dev.internal", batch, time.Now(), "d-"+probe)
	recordTok, _ := ca.SignRecordProof(hostSigner, hostCert, "bastion1.dev.internal", probe, 0, batch, time.Now(), "p-"+probe)
	report := []byte(`{"host":"bastion1.dev.internal","taken":"2026-11-29T10:00:00Z","keys":[],"accounts":0,"password_authentication":false,"kbd_interactive_authentication":false}`)
	reportTok, _ := ca.SignRecordProof(hostSigner, hostCert, "bastion1.dev.internal", probe, 0, report, time.Now(), "q-"+probe)
	for _, tt := range []struct {
		name, path, token string
		body              []byte
		want              int
	}{
		{"renewal proof ships", "/v1/recordings/" + probe + "?offset=0", renewTok, batch, http.StatusUnauthorized},
		{"discovery proof ships", "/v1/recordings/" + probe + "?offset=0", discoverTok, batch, http.StatusUnauthorized},
		{"recording proof renews", "/v1/certs/host/renew", recordTok, nil, http.StatusUnauthorized},
		{"recording proof reports", "/v1/discovery", reportTok, report, http.StatusUnauthorized},
		{"recording proof ships", "/v1/recordings/" + probe + "?offset=0", recordTok, batch, http.StatusOK},
		{"the same proof again", "/v1/recordings/" + probe + "?offset=0", recordTok, batch, http.StatusUnauthorized},
	} {
		if got := post(tt.path, tt.token, tt.body); got != tt.want {
			t.Errorf("%s: HTTP %d, want %d", tt.name, got, tt.want)
		}
	}

	auditor := mint(map[string]any{"sub": "carol", "preferred_username": "carol", "groups": []string{"auditors"}})
	got, err := apiClient(ctx, base).Recording(ctx, auditor, noisy)
	if err != nil {
		t.Fatal(err)
	}
	var kept int
	for _, l := range got.Lines {
		kept += len(l)
	}
	r, err := ca.ReadRecording(strings.NewReader(strings.Join(got.Lines, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if kept > 256<<10+1024 || r.Cut.Cap != "session" || r.End == nil || r.End.Exit != 130 || r.Final != final {
		t.Fatalf("kept %d bytes, cut %+v, end %+v, final %s (want %s)", kept, r.Cut, r.End, r.Final, final)
	}
	mainRDB := redis.NewClient(&redis.Options{Addr: main.Addr})
	defer mainRDB.Close()
	if keys, err := mainRDB.Keys(ctx, "sshca:rec:*").Result(); err != nil || len(keys) != 0 {
		t.Fatalf("recording keys on the main Redis: %v %v", keys, err)
	}
	recRDB := redis.NewClient(&redis.Options{Addr: recRedis.Addr})
	defer recRDB.Close()
	// Kept for the default recordings.retention (90 days) after its last batch, in Redis's own
	// expiry: the session's record and lines go even if no prune runs.
	keys := store.Keys{}
	for _, k := range []string{keys.RecordingSession(noisy), keys.RecordingLines(noisy)} {
		at := time.UnixMilli(recRDB.PExpireTime(ctx, k).Val().Milliseconds())
		if at.Before(shipped.Add(90*24*time.Hour).Truncate(time.Millisecond)) || at.After(shippedBy.Add(90*24*time.Hour)) {
			t.Errorf("%s expires at %v, want 90 days after its last batch (%v..%v)", k, at, shipped.Add(90*24*time.Hour), shippedBy.Add(90*24*time.Hour))
		}
	}

	// The recordings Redis reaches its maxmemory (other hosts' sessions, say): a new session's
	// batch is refused with a 503 that says so, and nothing else is.
	// Large values first, then small ones into what the last large one's buffers left.
	for i, size := 0, 64<<10; size >= 16; size /= 4 {
		for ; ; i++ {
			err := recRDB.Set(ctx, "filler:"+strconv.Itoa(i), bytes.Repeat([]byte("f"), size), 0).Err()
			if err != nil && strings.HasPrefix(err.Error(), "OOM") {
				break
			}
			if err != nil || i > 100000 {
				t.Fatalf("filling the recordings Redis: %v after %d", err, i)
			}
		}
	}
	// Redis frees memory in the background after a fill (client buffers shrink, keys
	// expire), so a write refused a moment ago can fit again: the test once shipped into the
	// "full" Redis. Pinning maxmemory under what is now used keeps it full until room is made.
	info, err := recRDB.InfoMap(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	usedMemory, err := strconv.ParseInt(info["Memory"]["used_memory"], 10, 64)
	if err != nil {
		t.Fatalf("used_memory: %v", err)
	}
	if err := recRDB.ConfigSet(ctx, "maxmemory", strconv.FormatInt(usedMemory/2, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	const big = "00000000000000000000000b"
	writeRecording(t, recDir, big, ca.RecordingHeader{Start: start, User: "root", Kind: "exec", Command: "cat /dev/urandom"},
		randomChunks(2, 1<<10), -1)
	shipErr := sh.ShipOnce(ctx)
	var ce *client.Error
	if !errors.As(shipErr, &ce) || ce.Status != http.StatusServiceUnavailable || !strings.Contains(ce.Message, "recording store is full") ||
		!strings.Contains(ce.Message, "maxmemory") {
		t.Fatalf("shipping into a full recordings Redis: %v", shipErr)
	}
	// The agent fails static and says so: the recording stays, its bytes are the backlog.
	bigSize := fileSize(t, filepath.Join(recDir, big+".rec"))
	detail, metrics := shipperHealthOf(t, sh)
	if detail["backlog_bytes"] != float64(bigSize) || detail["backlog_recordings"] != 1.0 || detail["failed"] != 1.0 ||
		!strings.Contains(fmt.Sprint(detail["last_error"]), "recording store is full") || !strings.HasPrefix(fmt.Sprint(detail["state"]), "failing") ||
		detail["last_shipped"] == nil || !strings.Contains(metrics, "sshca_bastion_recording_backlog_bytes "+strconv.FormatInt(bigSize, 10)+"\n") ||
		!strings.Contains(metrics, "sshca_bastion_recording_ship_failures_total 1\n") {
		t.Errorf("the agent's health while the CA refuses: %v\n%s", detail, metrics)
	}
	issueAlice() // issuance goes on

	list, err := apiClient(ctx, base).Recordings(ctx, auditor, client.RecordingQuery{Principal: "root"})
	if err != nil || len(list) != 2 || list[0].ID != noisy || list[0].Live() || list[1].ID != probe {
		t.Fatalf("list: %v %+v", err, list)
	}
	// Room again: the batch goes through, and the session is listed as live (no end yet).
	if err := recRDB.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := recRDB.ConfigSet(ctx, "maxmemory", "4mb").Err(); err != nil {
		t.Fatal(err)
	}
	if err := sh.ShipOnce(ctx); err != nil {
		t.Fatalf("shipping once there is room: %v", err)
	}
	if detail, metrics := shipperHealthOf(t, sh); detail["backlog_bytes"] != 0.0 || detail["backlog_recordings"] != 0.0 ||
		detail["last_error"] != nil || detail["state"] != nil || !strings.Contains(metrics, "sshca_bastion_recording_backlog_bytes 0\n") {
		t.Errorf("the agent's health once the CA took everything: %v\n%s", detail, metrics)
	}
	if list, err := apiClient(ctx, base).Recordings(ctx, auditor, client.RecordingQuery{Live: true, Since: start.Add(-time.Second)}); err != nil || len(list) != 1 || list[0].ID != big {
		t.Fatalf("live list: %v %+v", err, list)
	}
	user := mint(map[string]any{"sub": "bob", "preferred_username": "bob"})
	if _, err := apiClient(ctx, base).Recordings(ctx, user, client.RecordingQuery{}); !errors.As(err, &ce) || ce.Status != http.StatusForbidden {
		t.Fatalf("a user without read lists recordings: %v", err)
	}
}

// shipperHealthOf is the recording shipper's part of the bastion agent's /healthz (its
// "recording_shipper" object) and the agent's /metrics, as runAgent serves them.
func shipperHealthOf(t *testing.T, sh *bastion.RecordShipper) (map[string]any, string) {
	t.Helper()
	a, err := bastion.NewAgent(bastion.Options{KRLPath: filepath.Join(t.TempDir(), "agent.krl"), Feed: store.NewMemory(time.Now)})
	if err != nil {
		t.Fatal(err)
	}
	h := agentHealthHandler(a, nil, shipperHealth{sh})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	var body struct {
		Shipper map[string]any `json:"recording_shipper"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Shipper == nil {
		t.Fatalf("/healthz %s: %v, no recording_shipper", rec.Body, err)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return body.Shipper, rec.Body.String()
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
