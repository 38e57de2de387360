package ui

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sshca/sshca/ca"
)

// fakeRecordings lets only carol read, as a policy giving auditors kind "read" would.
type fakeRecordings struct {
	since []time.Time
	recs  []ca.SessionRecording
	lines map[string][][]byte
}

func (f *fakeRecordings) SessionRecordings(_ context.Context, token string, q ca.RecordingFilter) (ca.RecordingPage, error) {
	if subjectOf(token) != "carol" {
		return ca.RecordingPage{}, ca.Denied("you may not list session recordings")
	}
	// As the store: by the start the bastion wrote, then ID, a page after q.After.
	f.since = append(f.since, q.Since)
	var out []ca.SessionRecording
	for _, r := range f.recs {
		if !r.Header.Start.Before(q.Since) && ca.RecordingCursorOf(r).Compare(q.After) > 0 {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(x, y ca.SessionRecording) int { return ca.RecordingCursorOf(x).Compare(ca.RecordingCursorOf(y)) })
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
		return ca.RecordingPage{Sessions: out, Next: ca.RecordingCursorOf(out[len(out)-1])}, nil
	}
	return ca.RecordingPage{Sessions: out}, nil
}

func (f *fakeRecordings) SessionRecordingLines(_ context.Context, token, id string) (ca.SessionRecording, [][]byte, error) {
	if subjectOf(token) != "carol" {
		return ca.SessionRecording{}, nil, ca.Denied("you may not read session recording " + id)
	}
	for _, r := range f.recs {
		if r.ID == id {
			return r, f.lines[id], nil
		}
	}
	return ca.SessionRecording{}, nil, &ca.Error{Kind: ca.KindNotFound, Msg: "no recording of session " + id}
}

// recordingLines writes a recording in the format the agent ships (a chained header and
// chunks), each chunk {T µs, kind, data}, and returns its lines and final hash.
func recordingLines(t *testing.T, h ca.RecordingHeader, chunks []ca.RecordingChunk) ([][]byte, string) {
	t.Helper()
	head, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	lines := [][]byte{head}
	last := ca.RecordingChainStart(head)
	for _, c := range chunks {
		last = ca.RecordingChainNext(last, c.Kind, c.T, c.Data)
		c.Hash = hex.EncodeToString(last[:])
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, b)
	}
	return lines, hex.EncodeToString(last[:])
}

const (
	recEnded = "0123456789abcdef01234567"
	recOpen  = "fedcba9876543210fedcba98"
	recOther = "aaaaaaaaaaaaaaaaaaaaaaaa"
	recOld   = "bbbbbbbbbbbbbbbbbbbbbbbb"
)

// hostile is a session's output split across chunks: "é" split in two, an invalid byte, markup
// that would end the <pre> and start a script, SGR colours, an OSC title and a bell.
var hostile = []string{"caf\xc3", "\xa9 \xff </pre><script>alert(1)</script>", " \x1b[31mred\x1b[0m \x1b]0;pwned-title\x07done\a\r\n"}

func withRecordings(t *testing.T, r *rig) (*fakeRecordings, string) {
	t.Helper()
	req := r.reqs.req.ID
	// A bastion whose clock is 10 minutes behind the CA's: its session seems to start before
	// the request was created.
	start := r.reqs.req.CreatedAt.Add(-10 * time.Minute).Truncate(time.Second)
	h := ca.RecordingHeader{Version: 1, ID: recEnded, Start: start, Host: "bastion1", User: "root",
		KeyID: "idp|alice/" + req, Command: "tail -f /var/log/syslog", Kind: "exec", PTY: true}
	var chunks []ca.RecordingChunk
	for i, s := range hostile {
		chunks = append(chunks, ca.RecordingChunk{T: int64(i+1) * 1500000, Kind: ca.ChunkOutput, Data: []byte(s)})
	}
	chunks = append(chunks, ca.RecordingChunk{T: 5000000, Kind: ca.ChunkEnd, Data: []byte(`{"exit":0}`)})
	lines, final := recordingLines(t, h, chunks)
	openH := h
	openH.ID, openH.Command = recOpen, ""
	openLines, _ := recordingLines(t, openH, nil)
	otherH := h
	otherH.ID, otherH.KeyID = recOther, "idp|erin/req_BBBBBBBBBBBBBBBB"
	// A session of this request's requester long before it (the index is by start).
	oldH := h
	oldH.ID, oldH.Start = recOld, r.reqs.req.CreatedAt.Add(-2*time.Hour)
	f := &fakeRecordings{
		recs: []ca.SessionRecording{
			{ID: recEnded, Host: "bastion1", Header: h, AccessRequest: req, End: &ca.RecordingEnd{Exit: 0}, Updated: start.Add(5 * time.Second)},
			{ID: recOpen, Host: "bastion2", Header: openH, AccessRequest: req,
				Cut: &ca.RecordingCut{Cap: "session", Chunks: 7, Bytes: 9000}},
			{ID: recOther, Host: "bastion1", Header: otherH, AccessRequest: "req_BBBBBBBBBBBBBBBB"},
			{ID: recOld, Host: "bastion1", Header: oldH, AccessRequest: req},
		},
		lines: map[string][][]byte{recEnded: lines, recOpen: openLines, recOther: lines},
	}
	r.console.o.Recordings = f
	return f, final
}

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body(t, resp)
}

func TestRequestPageListsItsRecordings(t *testing.T) {
	r := newRig(t, nil)
	f, _ := withRecordings(t, r)
	c := r.browser()
	_, page := r.signIn(c, "carol", "/ui/requests/"+r.reqs.req.ID)
	for _, want := range []string{`href="/ui/recordings/` + recEnded + `"`, `href="/ui/recordings/` + recOpen + `"`,
		"bastion1", "bastion2", "tail -f /var/log/syslog", "ended (exit 0)",
		"live or unterminated (no end arrived); 7 chunks (9000 bytes) cut past the CA&#39;s session cap",
		r.reqs.req.CreatedAt.Add(-10 * time.Minute).UTC().Format("2006-01-02 15:04:05 UTC")} {
		if !strings.Contains(page, want) {
			t.Fatalf("request page lacks %s:\n%s", want, page)
		}
	}
	if strings.Contains(page, recOther) {
		t.Fatalf("request page lists another request's session:\n%s", page)
	}
	// Only sessions that could be under the request are read: since its creation, less the
	// bastion's possible clock skew.
	if strings.Contains(page, recOld) || len(f.since) != 1 || !f.since[0].Equal(r.reqs.req.CreatedAt.Add(-bastionClockSkew)) {
		t.Fatalf("read since %v (request created %v); page:\n%s", f.since, r.reqs.req.CreatedAt, page)
	}

	// A user the policy does not let read sees a note, not the sessions.
	c = r.browser()
	_, page = r.signIn(c, "bob", "/ui/requests/"+r.reqs.req.ID)
	if !strings.Contains(page, "administrators and auditors") || strings.Contains(page, "/ui/recordings/") {
		t.Fatalf("a non-reader's request page:\n%s", page)
	}
}

func TestRecordingPagePlaysInert(t *testing.T) {
	r := newRig(t, nil)
	_, final := withRecordings(t, r)
	c := r.browser()
	resp, page := r.signIn(c, "carol", "/ui/recordings/"+recEnded)
	if resp.StatusCode != 200 {
		t.Fatalf("recording page: %d\n%s", resp.StatusCode, page)
	}
	for _, want := range []string{"verified; final hash <code>" + final + "</code>", "ended (exit 0)", "bastion1",
		"<td>1.500000s</td><td><pre>caf</pre>", "<td>3.000000s</td><td><pre>é \uFFFD &lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;", "<td>4.500000s</td><td><pre> red done\n</pre>",
		`href="/ui/recordings/` + recEnded + `/cast"`} {
		if !strings.Contains(page, want) {
			t.Fatalf("recording page lacks %q:\n%s", want, page)
		}
	}
	for _, bad := range []string{"<script", "\x1b", "\a", "pwned-title", "[31m", "\xc3<", "\r"} {
		if strings.Contains(page, bad) {
			t.Fatalf("recording page holds %q:\n%s", bad, page)
		}
	}
	resp, cast := get(t, c, r.srv.URL+"/ui/recordings/"+recEnded+"/cast")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Disposition") != "attachment; filename="+recEnded+".cast" {
		t.Fatalf("cast: %d %v", resp.StatusCode, resp.Header)
	}
	var h struct {
		Version int    `json:"version"`
		Command string `json:"command"`
	}
	first, rest, _ := strings.Cut(cast, "\n")
	if err := json.Unmarshal([]byte(first), &h); err != nil || h.Version != 2 || h.Command != "tail -f /var/log/syslog" {
		t.Fatalf("cast header %q (%v)", first, err)
	}
	if !strings.Contains(rest, "[3.000000,\"o\",\"é \uFFFD </pre><script>") {
		t.Fatalf("cast events:\n%s", rest)
	}
}

func TestRecordingRefusedToNonReader(t *testing.T) {
	r := newRig(t, nil)
	withRecordings(t, r)
	c := r.browser()
	for _, p := range []string{"/ui/recordings/" + recEnded, "/ui/recordings/" + recEnded + "/cast"} {
		resp, page := r.signIn(c, "bob", p)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(page, "you may not read session recording "+recEnded) ||
			strings.Contains(page, "caf") {
			t.Fatalf("%s for bob: %d\n%s", p, resp.StatusCode, page)
		}
	}
}

func TestRecordingBrokenChain(t *testing.T) {
	r := newRig(t, nil)
	f, _ := withRecordings(t, r)
	// The second output chunk's data changed after it was hashed.
	var ch ca.RecordingChunk
	if err := json.Unmarshal(f.lines[recEnded][2], &ch); err != nil {
		t.Fatal(err)
	}
	ch.Data = []byte("forged")
	b, _ := json.Marshal(ch)
	f.lines[recEnded] = append(append([][]byte{}, f.lines[recEnded][:2]...), append([][]byte{b}, f.lines[recEnded][3:]...)...)
	c := r.browser()
	_, page := r.signIn(c, "carol", "/ui/recordings/"+recEnded)
	if !strings.Contains(page, "does not verify: read recording: line 3: hash does not follow") || strings.Contains(page, "/cast") || strings.Contains(page, "forged") {
		t.Fatalf("broken recording's page:\n%s", page)
	}
	resp, page := get(t, c, r.srv.URL+"/ui/recordings/"+recEnded+"/cast")
	if resp.StatusCode != http.StatusConflict || !strings.Contains(page, "does not verify") {
		t.Fatalf("broken recording's cast: %d\n%s", resp.StatusCode, page)
	}
}

// TestRequestRecordingsPages: the request page reads RecordingsPageLimit recordings at a time
// (every request's, since the request was created) and links the next page; the sessions of
// the request on each page are shown, none twice, and a cursor the console did not give is a
// 400 page naming it.
func TestRequestRecordingsPages(t *testing.T) {
	r := newRig(t, nil)
	f, _ := withRecordings(t, r)
	base := f.recs[0]
	// 1,500 sessions of other requests after this request's own, then one more of its own.
	for i := range RecordingsPageLimit + 500 {
		o := base
		o.ID = fmt.Sprintf("%024x", 1000+i)
		o.Header.Start = base.Header.Start.Add(time.Duration(i+1) * time.Second)
		o.AccessRequest = "req_BBBBBBBBBBBBBBBB"
		f.recs = append(f.recs, o)
	}
	late := base
	late.ID, late.Header.Start = fmt.Sprintf("%024x", 999999), base.Header.Start.Add(time.Hour)
	f.recs = append(f.recs, late)
	c := r.browser()
	_, page := r.signIn(c, "carol", "/ui/requests/"+r.reqs.req.ID)
	if !strings.Contains(page, recEnded) || strings.Contains(page, late.ID) || !strings.Contains(page, `id="recordings-next"`) {
		t.Fatalf("first page of recordings:\n%.2000s", page)
	}
	i := strings.Index(page, `id="recordings-next" href="`) + len(`id="recordings-next" href="`)
	next := strings.ReplaceAll(page[i:i+strings.IndexByte(page[i:], '"')], "&amp;", "&")
	resp, page := get(t, c, r.srv.URL+next)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, late.ID) || strings.Contains(page, recEnded) || strings.Contains(page, `id="recordings-next"`) {
		t.Fatalf("second page of recordings (%s): %d\n%.2000s", next, resp.StatusCode, page)
	}
	if resp, page := get(t, c, r.srv.URL+"/ui/requests/"+r.reqs.req.ID+"?cursor=zz"); resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, "cursor") {
		t.Errorf("a made-up cursor: %d\n%.500s", resp.StatusCode, page)
	}
}
