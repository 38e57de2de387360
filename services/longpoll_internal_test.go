package services

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/revocation"
)

// countedFeed is a KRLFeed that counts its reads (States) and the notices taken (Changed).
type countedFeed struct {
	mu      sync.Mutex
	st      ca.RevocationState
	changed chan struct{}
	reads   atomic.Int64
	notices atomic.Int64
}

func (f *countedFeed) States(context.Context) ([]ca.RevocationState, error) {
	f.reads.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st
	st.Entries = append([]ca.RevocationEntry(nil), f.st.Entries...)
	return []ca.RevocationState{st}, nil
}

func (f *countedFeed) Changed() <-chan struct{} {
	f.notices.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *countedFeed) revoke(serial string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.Version++
	f.st.Entries = append(f.st.Entries, ca.RevocationEntry{Kind: ca.RevokedSerial, Value: serial, Expiry: time.Now().Add(time.Hour)})
	close(f.changed)
	f.changed = make(chan struct{})
}

// newFedKRLHandler is a KRL handler on clock over a countedFeed of one CA's state (version
// 1), and the channel that stops it.
func newFedKRLHandler(t *testing.T, clock clockwork.Clock) (*krlHandler, *countedFeed, chan struct{}) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	feed := &countedFeed{st: ca.RevocationState{CA: signer.PublicKey(), Version: 1}, changed: make(chan struct{})}
	stop := make(chan struct{})
	return newKRLHandler(feed, revocation.EncodeKRL, slog.New(slog.DiscardHandler), stop, clock), feed, stop
}

// TestKRLLongPollReusesRead: after a change every agent of a fleet asks again at once with
// the KRL it was just given; those long polls wait on the last read instead of each reading
// the store and encoding the KRL again (one revocation would cost O(agents) reads). What must
// still read: an agent holding another KRL (behind, or ahead because another replica answered
// it first), any agent once a change was noticed after the last read (it must get the new KRL
// at once, not wait on a stale one), and any agent once the read is reuseRead old (a store that
// stopped answering is told within it).
func TestKRLLongPollReusesRead(t *testing.T) {
	clock := clockwork.NewFakeClockAt(time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC))
	h, feed, _ := newFedKRLHandler(t, clock)

	type answer struct {
		code int
		etag string
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	poll := func(ctx context.Context, query, inm string) <-chan answer {
		out := make(chan answer, 1)
		wg.Go(func() {
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/v1/krl"+query, nil)
			if inm != "" {
				req.Header.Set("If-None-Match", inm)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			out <- answer{rec.Code, rec.Header().Get("ETag")}
		})
		return out
	}
	waitNotices := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for feed.notices.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d requests arrived", feed.notices.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	expectReads := func(want int64, what string) {
		t.Helper()
		if got := feed.reads.Load(); got != want {
			t.Fatalf("%s: %d reads of the states in all, want %d", what, got, want)
		}
	}

	first := <-poll(ctx, "", "")
	if first.code != http.StatusOK || first.etag == "" {
		t.Fatalf("plain GET = %d, ETag %q", first.code, first.etag)
	}
	e1 := first.etag
	expectReads(1, "a plain GET")

	// Agents that hold the current KRL arrive: they wait, and read nothing.
	const agents = 30
	waiting := make([]<-chan answer, agents)
	for i := range waiting {
		waiting[i] = poll(ctx, "?wait=20s", e1)
	}
	waitNotices(1 + agents)
	expectReads(1, "30 long polls holding the current KRL")

	// An agent ahead of this replica (an ETag it never served) and one behind are read for.
	for _, inm := range []string{`"99-ffffffffffff"`, `"0-000000000000"`} {
		if a := <-poll(ctx, "?wait=20s", inm); a.code != http.StatusOK || a.etag != e1 {
			t.Fatalf("long poll holding %s = %d %s, want 200 at once with %s", inm, a.code, a.etag, e1)
		}
	}
	expectReads(3, "two long polls holding another KRL")

	// Once the read is reuseRead old, an arriving agent reads (and waits: nothing changed).
	clock.Advance(reuseRead)
	late := poll(ctx, "?wait=20s", e1)
	waitNotices(1 + agents + 2 + 1)
	expectReads(4, "a long poll after the last read aged")

	// A change: every waiter gets the new KRL from one shared read.
	feed.revoke("7")
	var e2 string
	for i, ch := range append(waiting, late) {
		a := <-ch
		if a.code != http.StatusOK || a.etag == e1 {
			t.Fatalf("waiter %d after the change = %d %s, want 200 with a new ETag", i, a.code, a.etag)
		}
		e2 = a.etag
	}
	expectReads(5, "one change with 31 waiters")

	// They all ask again at once, holding the new KRL: no read of their own.
	before := feed.notices.Load()
	for i := range waiting {
		waiting[i] = poll(ctx, "?wait=20s", e2)
	}
	waitNotices(before + agents)
	expectReads(5, "the fleet asking again after a change")

	// A change noticed after the last read, with nobody waiting for it yet: an agent that holds
	// the KRL of the last read must not wait on it.
	cancel() // end the waiters
	for _, ch := range waiting {
		<-ch
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	feed.revoke("8")
	if a := <-poll(ctx, "?wait=2s", e2); a.code != http.StatusOK || a.etag == e2 {
		t.Fatalf("long poll holding the last read's KRL after a change = %d %s, want 200 with a new ETag at once", a.code, a.etag)
	}
	expectReads(6, "a long poll after an unread change")
}

// TestKRLLongPollHeldReadIsConfirmed: a revocation acknowledged before an agent's long poll
// arrived, which the follower has not noticed yet (its XREAD lags, or it is backing off), may
// let the poll wait on the last read (it is recent and its notice is still open). When that wait
// ends without a notice, the answer must come from a read begun after the poll arrived: a 304
// from the held read would tell the agent "no change" about a revocation the revoker was
// already told is done, and the agent would stay behind for another whole wait.
func TestKRLLongPollHeldReadIsConfirmed(t *testing.T) {
	clock := clockwork.NewFakeClockAt(time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC))
	h, feed, _ := newFedKRLHandler(t, clock)
	// waitOut runs get and ends its wait on the clock once the poll waits.
	waitOut := func(get func() *httptest.ResponseRecorder) *httptest.ResponseRecorder {
		t.Helper()
		done := make(chan *httptest.ResponseRecorder, 1)
		go func() { done <- get() }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := clock.BlockUntilContext(ctx, 1); err != nil {
			t.Fatalf("the long poll does not wait on its clock: %v", err)
		}
		clock.Advance(50 * time.Millisecond)
		return <-done
	}

	get := func(query, inm string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/v1/krl"+query, nil)
		if inm != "" {
			req.Header.Set("If-None-Match", inm)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	e1 := get("", "").Header().Get("ETag")

	// Revoked and acknowledged in the store; the follower has not noticed (no close).
	feed.mu.Lock()
	feed.st.Version++
	feed.st.Entries = append(feed.st.Entries, ca.RevocationEntry{Kind: ca.RevokedSerial, Value: "9", Expiry: time.Now().Add(time.Hour)})
	feed.mu.Unlock()

	rec := waitOut(func() *httptest.ResponseRecorder { return get("?wait=50ms", e1) })
	if rec.Code != http.StatusOK || rec.Header().Get("ETag") == e1 {
		t.Fatalf("long poll sent after an acknowledged revocation = %d %s, want 200 with a new ETag (not %s)", rec.Code, rec.Header().Get("ETag"), e1)
	}
	e2 := rec.Header().Get("ETag")

	// A fleet held on one read and timing out together confirms with one read, not one each.
	before := feed.reads.Load()
	var wg sync.WaitGroup
	codes := make([]int, 20)
	for i := range codes {
		wg.Go(func() { codes[i] = get("?wait=50ms", e2).Code })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := clock.BlockUntilContext(ctx, len(codes)); err != nil {
		t.Fatalf("the long polls do not wait on their clock: %v", err)
	}
	clock.Advance(50 * time.Millisecond) // their waits end together
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusNotModified {
			t.Fatalf("agent %d holding the current KRL = %d, want 304", i, c)
		}
	}
	if n := feed.reads.Load() - before; n < 1 || n > 10 {
		t.Fatalf("20 held long polls ending together read the states %d times, want about 1 (more only for polls that arrive after a confirming read began), not one each", n)
	}
}

// TestKRLLongPollWaitsOnItsClock: a long poll's wait is timed by the handler's clock, as the
// recording shipper's rounds are (TestRecordShipperShipsOnItsClock): one holding the current
// KRL answers nothing while its clock has not reached the wait, whatever time passes, and 304
// as soon as it has, without a change. Shutting down ends it at once with 304 too.
func TestKRLLongPollWaitsOnItsClock(t *testing.T) {
	clock := clockwork.NewFakeClock()
	h, _, stop := newFedKRLHandler(t, clock)
	get := func(query, inm string) <-chan *httptest.ResponseRecorder {
		out := make(chan *httptest.ResponseRecorder, 1)
		go func() {
			req := httptest.NewRequest(http.MethodGet, "/v1/krl"+query, nil)
			if inm != "" {
				req.Header.Set("If-None-Match", inm)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			out <- rec
		}()
		return out
	}
	etag := (<-get("", "")).Header().Get("ETag")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, end := range []string{"wait", "stop"} {
		poll := get("?wait=25s", etag)
		if err := clock.BlockUntilContext(ctx, 1); err != nil {
			t.Fatalf("the long poll does not wait on its clock: %v", err)
		}
		clock.Advance(25*time.Second - time.Millisecond)
		select {
		case rec := <-poll:
			t.Fatalf("answered %d before its wait ended on its clock", rec.Code)
		case <-time.After(100 * time.Millisecond):
		}
		if end == "wait" {
			clock.Advance(time.Millisecond)
		} else {
			close(stop)
		}
		select {
		case rec := <-poll:
			if rec.Code != http.StatusNotModified || rec.Header().Get("ETag") != etag {
				t.Fatalf("at the end (%s): %d %s, want 304 with %s", end, rec.Code, rec.Header().Get("ETag"), etag)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer 5 s after the end (%s)", end)
		}
	}
}
