package bastion

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/client"
)

// fakeRecordingCA takes batches as the CA does for offsets: a batch from the line it has is
// kept, any other is answered with where its lines end; status, when set, answers every batch.
type fakeRecordingCA struct {
	mu      sync.Mutex
	lines   [][]byte
	offsets []int64
	status  int
}

func (f *fakeRecordingCA) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	off, _ := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	f.offsets = append(f.offsets, off)
	if f.status != 0 {
		w.WriteHeader(f.status)
		_, _ = w.Write([]byte(`{"error":"recording line 3: hash does not follow"}`))
		return
	}
	body, _ := io.ReadAll(r.Body)
	if off == int64(len(f.lines)) {
		for _, l := range bytes.SplitAfter(body, []byte("\n")) {
			if len(l) > 0 {
				f.lines = append(f.lines, l)
			}
		}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"session": r.PathValue("id"), "received": len(f.lines)})
}

// newShipperFixture is what a shipper test ships with: a fake CA taking recordings (served
// until the test ends), an empty recordings directory, and a host key with its certificate.
func newShipperFixture(t *testing.T) (fake *fakeRecordingCA, url, recs string, hostKey ssh.Signer, cert *ssh.Certificate) {
	t.Helper()
	dir := t.TempDir()
	caKey := writeKey(t, filepath.Join(dir, "ca"))
	hostKey = writeKey(t, filepath.Join(dir, "host"))
	cert = &ssh.Certificate{Key: hostKey.PublicKey(), CertType: ssh.HostCert, KeyId: "b1", ValidPrincipals: []string{"b1.example.com"},
		ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, caKey); err != nil {
		t.Fatal(err)
	}
	fake = &fakeRecordingCA{}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/recordings/{id}", fake)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	recs = filepath.Join(dir, "recs")
	if err := os.MkdirAll(recs, 0o700); err != nil {
		t.Fatal(err)
	}
	return fake, srv.URL, recs, hostKey, cert
}

// TestRecordShipperResumes: the shipper sends only complete lines, resumes after a restart
// from the line its state file names, follows the CA when the CA has more lines than it
// thought (an answer lost), stops at the end, and never resends a batch the CA refused.
func TestRecordShipperResumes(t *testing.T) {
	fake, srvURL, recs, hostKey, cert := newShipperFixture(t)
	const id = "0123456789abcdef01234567"
	path := filepath.Join(recs, id+".rec")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cw, err := newChainWriter(f, RecordingHeader{Version: 1, ID: id, Start: time.Now(), User: "root", Kind: "exec"}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	newShipper := func() *RecordShipper {
		return &RecordShipper{Dir: recs, Client: client.New(srvURL), Key: hostKey, MaxBatch: 200,
			Cert: func() (*ssh.Certificate, error) { return cert, nil }}
	}
	ctx := context.Background()
	for i := range 5 {
		if err := cw.write(ChunkOutput, []byte(strings.Repeat("x", i+10))); err != nil {
			t.Fatal(err)
		}
	}
	// A line the recorder is still writing is not shipped.
	if _, err := f.WriteString(`{"t":1,"k":"o"`); err != nil {
		t.Fatal(err)
	}
	if err := newShipper().ShipOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if len(fake.lines) != 6 || len(fake.offsets) < 2 {
		t.Fatalf("CA has %d lines after %d batches, want the 6 complete ones in several", len(fake.lines), len(fake.offsets))
	}
	if st := readShipState(filepath.Join(recs, id+".shipped")); st.lines != 6 || st.done {
		t.Fatalf("state %+v", st)
	}
	// The partial line is finished; the agent restarts (a new shipper) and the CA has taken
	// one more line than this host knows (its answer was lost).
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	_, _ = f.Seek(0, io.SeekStart)
	cw, _ = newChainWriter(f, RecordingHeader{Version: 1, ID: id, Start: time.Now(), User: "root", Kind: "exec"}, time.Now)
	fake.mu.Lock()
	fake.lines = nil
	fake.mu.Unlock()
	for i := range 8 {
		_ = cw.write(ChunkOutput, []byte(strings.Repeat("y", i+10)))
	}
	_ = cw.write(ChunkEnd, []byte(`{"exit":0}`))
	whole, _ := os.ReadFile(path)
	all := bytes.SplitAfter(whole, []byte("\n"))
	fake.mu.Lock()
	fake.lines = append([][]byte{}, all[:7]...) // the CA has 7; the state says 6
	fake.offsets = nil
	fake.mu.Unlock()
	if err := newShipper().ShipOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if fake.offsets[0] != 6 || !bytes.Equal(bytes.Join(fake.lines, nil), whole) {
		t.Fatalf("offsets %v; CA has %d lines, file %d", fake.offsets, len(fake.lines), len(all)-1)
	}
	if st := readShipState(filepath.Join(recs, id+".shipped")); st.lines != int64(len(all)-1) || !st.done {
		t.Fatalf("state after the end %+v", st)
	}
	n := len(fake.offsets)
	_ = newShipper().ShipOnce(ctx)
	if len(fake.offsets) != n {
		t.Fatal("a recording shipped to its end was sent again")
	}

	// A refused batch is recorded and not resent.
	const id2 = "abcdefabcdefabcdefabcdef"
	f2, _ := os.Create(filepath.Join(recs, id2+".rec"))
	defer f2.Close()
	cw2, _ := newChainWriter(f2, RecordingHeader{Version: 1, ID: id2, Start: time.Now(), User: "root", Kind: "exec"}, time.Now)
	_ = cw2.write(ChunkOutput, []byte("z"))
	fake.mu.Lock()
	fake.status = http.StatusBadRequest
	fake.mu.Unlock()
	_ = newShipper().ShipOnce(ctx)
	if st := readShipState(filepath.Join(recs, id2+".shipped")); !strings.Contains(st.refused, "hash does not follow") {
		t.Fatalf("refused state %+v", st)
	}
	n = len(fake.offsets)
	_ = newShipper().ShipOnce(ctx)
	if len(fake.offsets) != n {
		t.Fatal("a refused recording was sent again")
	}
}

// TestRecordShipperShipsOnItsClock: the shipper's rounds are paced by its clock: a line
// written after a round reaches the CA only once Every has passed on that clock, and then at
// once. Putting a real ticker back fails here (the fake clock's advance would not start a round).
func TestRecordShipperShipsOnItsClock(t *testing.T) {
	fake, srvURL, recs, hostKey, cert := newShipperFixture(t)
	const id = "0123456789abcdef01234568"
	f, err := os.Create(filepath.Join(recs, id+".rec"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cw, err := newChainWriter(f, RecordingHeader{Version: 1, ID: id, Start: time.Now(), User: "root", Kind: "exec"}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	lines := func() int {
		fake.mu.Lock()
		defer fake.mu.Unlock()
		return len(fake.lines)
	}
	if err := cw.write(ChunkOutput, []byte("first")); err != nil {
		t.Fatal(err)
	}
	clk := clockwork.NewFakeClock()
	const every = 2 * time.Second
	// Each round of Run is reported, so that the test writes the next line only once the
	// round before it is over (a round reads the recording until no complete line is left).
	rounds := make(chan struct{}, 1)
	sh := &RecordShipper{Dir: recs, Client: client.New(srvURL), Key: hostKey, Every: every, Clock: clk,
		Cert: func() (*ssh.Certificate, error) { return cert, nil }, roundDone: func() { rounds <- struct{}{} }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); sh.Run(ctx) }()
	defer func() {
		cancel()
		for {
			select {
			case <-rounds:
			case <-done:
				return
			}
		}
	}()
	round := func(want int, what string) {
		t.Helper()
		select {
		case <-rounds:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no round", what)
		}
		if n := lines(); n != want {
			t.Fatalf("%s: the CA has %d lines, want %d", what, n, want)
		}
	}
	round(2, "the first round, at once") // the header and one chunk
	for r := range 3 {
		if err := cw.write(ChunkOutput, []byte(strings.Repeat("z", r+1))); err != nil {
			t.Fatal(err)
		}
		bctx, bcancel := context.WithTimeout(ctx, 10*time.Second)
		err := clk.BlockUntilContext(bctx, 1) // the shipper waits on its clock's ticker
		bcancel()
		if err != nil {
			t.Fatalf("round %d: the shipper does not wait on its clock: %v", r, err)
		}
		clk.Advance(every - time.Millisecond)
		select {
		case <-rounds:
			t.Fatalf("round %d: a round began before Every passed on the clock", r)
		case <-time.After(200 * time.Millisecond):
		}
		if n := lines(); n != 2+r {
			t.Fatalf("round %d: the CA has %d lines before Every passed on the clock, want %d", r, n, 2+r)
		}
		clk.Advance(time.Millisecond)
		round(3+r, fmt.Sprintf("round %d, once Every passed on the clock", r))
	}
}
