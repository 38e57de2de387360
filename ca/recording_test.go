package ca_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// testRecording builds an agent's recording file line by line, chained as the agent chains it.
type testRecording struct {
	id    string
	lines [][]byte
	last  [32]byte
}

func newTestRecording(t *testing.T, id string, h ca.RecordingHeader) *testRecording {
	t.Helper()
	h.Version, h.ID = 1, id
	line, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	return &testRecording{id: id, lines: [][]byte{line}, last: ca.RecordingChainStart(line)}
}

func (r *testRecording) add(kind string, data []byte) {
	t := int64(len(r.lines)) * 1000
	r.last = ca.RecordingChainNext(r.last, kind, t, data)
	line, _ := json.Marshal(ca.RecordingChunk{T: t, Kind: kind, Data: data, Hash: hex.EncodeToString(r.last[:])})
	r.lines = append(r.lines, line)
}

func (r *testRecording) end(exit int) {
	b, _ := json.Marshal(ca.RecordingEnd{Exit: exit})
	r.add(ca.ChunkEnd, b)
}

// batch is lines [from, to) of the file, newline-terminated.
func (r *testRecording) batch(from, to int) []byte {
	var b []byte
	for _, l := range r.lines[from:to] {
		b = append(append(b, l...), '\n')
	}
	return b
}

func (r *testRecording) final() string { return hex.EncodeToString(r.last[:]) }

type recordingFixture struct {
	a        *ca.Authority
	audit    *fakeAudit
	hostKey  ssh.Signer
	cert     *ssh.Certificate
	foreign  *ssh.Certificate
	now      time.Time
	jti      int
	newStore func() *store.MemoryRecordings
}

func newRecordingFixture(t *testing.T) *recordingFixture {
	t.Helper()
	return newRecordingFixtureAudit(t, nil)
}

// newRecordingFixtureAudit is newRecordingFixture with al as the audit log (nil: f.audit, a
// fakeAudit).
func newRecordingFixtureAudit(t *testing.T, al ca.AuditLog) *recordingFixture {
	t.Helper()
	ctx := context.Background()
	f := &recordingFixture{now: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC), audit: &fakeAudit{}}
	if al == nil {
		al = f.audit
	}
	clock := func() time.Time { return f.now }
	pol, err := policies.LoadFS(ctx, policies.Embedded)
	if err != nil {
		t.Fatal(err)
	}
	caKey, _ := newSSHKey(t)
	sgn := signer.New(caKey, anySerial{}, signer.Options{Now: clock})
	auditor := ca.Identity{Issuer: "https://idp", Subject: "admin", Username: "admin", Groups: []string{"sshca-admins"}}
	f.a, err = ca.New(ca.Config{Authenticator: fakeAuth{id: auditor}, Policy: pol, UserSigner: sgn, HostSigner: sgn,
		Store: &fakeStore{}, Revocations: nothingRevoked{}, Tokens: &onceLedger{}, Audit: al, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	var hostPub ssh.PublicKey
	f.hostKey, hostPub = newSSHKey(t)
	f.cert, err = sgn.Sign(ctx, &ssh.Certificate{Key: hostPub, CertType: ssh.HostCert, KeyId: "bastion1",
		ValidPrincipals: []string{"bastion1.example.com", "bastion1"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _ := newSSHKey(t)
	f.foreign, err = signer.New(otherCA, anySerial{}, signer.Options{Now: clock}).Sign(ctx, &ssh.Certificate{Key: hostPub,
		CertType: ssh.HostCert, KeyId: "bastion1", ValidPrincipals: []string{"bastion1.example.com"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f.newStore = func() *store.MemoryRecordings { return store.NewMemoryRecordings(clock) }
	return f
}

func (f *recordingFixture) proof(t *testing.T, c *ssh.Certificate, host, session string, offset int64, batch []byte) string {
	t.Helper()
	f.jti++
	tok, err := ca.SignRecordProof(f.hostKey, c, host, session, offset, batch, f.now, fmt.Sprintf("jti-%d", f.jti))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// underContext is a recording proof signed under another context than the recording one.
func (f *recordingFixture) underContext(t *testing.T, sigContext, session string, offset int64, batch []byte) string {
	t.Helper()
	tok := f.proof(t, f.cert, "bastion1.example.com", session, offset, batch)
	payload, _, _ := strings.Cut(tok, ".")
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := f.hostKey.Sign(nil, append([]byte(sigContext), raw...))
	if err != nil {
		t.Fatal(err)
	}
	return payload + "." + base64.RawURLEncoding.EncodeToString(ssh.Marshal(sig))
}

// ship sends lines [from, to) with a fresh proof.
func (f *recordingFixture) ship(t *testing.T, st ca.RecordingStore, lim ca.RecordingLimits, r *testRecording, from, to int) (ca.RecordingAccepted, error) {
	t.Helper()
	b := r.batch(from, to)
	return f.a.AcceptRecording(context.Background(), st, lim, f.proof(t, f.cert, "bastion1.example.com", r.id, int64(from), b), r.id, int64(from), b)
}

const sessA = "0123456789abcdef01234567"

// TestAcceptRecordingProofs: a batch is kept only under a proof signed with the recording
// context by the key of a current host certificate of ours, for a host name of it, this
// session, this offset and these exact bytes, used once. A renewal proof and a discovery proof
// ship nothing, and a recording proof neither renews nor reports.
func TestAcceptRecordingProofs(t *testing.T) {
	f := newRecordingFixture(t)
	ctx := context.Background()
	rec := newTestRecording(t, sessA, ca.RecordingHeader{User: "root", KeyID: "alice~00#7", Serial: "7", Kind: "exec", Command: "id"})
	rec.add(ca.ChunkOutput, []byte("uid=0(root)\n"))
	body := rec.batch(0, 2)
	renewTok, err := ca.SignRenewToken(f.hostKey, f.cert, f.now, "jti-renew")
	if err != nil {
		t.Fatal(err)
	}
	discoverTok, err := ca.SignDiscoverProof(f.hostKey, f.cert, "bastion1.example.com", body, f.now, "jti-discover")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		token   string
		session string
		offset  int64
		body    []byte
		want    ca.ErrorKind
		msg     string
	}{
		{"accepted", f.proof(t, f.cert, "bastion1.example.com", sessA, 0, body), sessA, 0, body, 0, ""},
		{"short host name of the certificate", f.proof(t, f.cert, "bastion1", sessA, 0, body), sessA, 0, body, 0, ""},
		{"renewal proof", renewTok, sessA, 0, body, ca.KindUnauthenticated, "not signed by the certificate's key"},
		{"discovery proof over the same bytes", discoverTok, sessA, 0, body, ca.KindUnauthenticated, "payload is not the recording JSON"},
		{"recording claims signed under the discovery context", f.underContext(t, ca.DiscoverContext, sessA, 0, body), sessA, 0, body, ca.KindUnauthenticated, "not signed by the certificate's key"},
		{"recording claims signed under the renewal context", f.underContext(t, ca.RenewContext, sessA, 0, body), sessA, 0, body, ca.KindUnauthenticated, "not signed by the certificate's key"},
		{"host not in the certificate", f.proof(t, f.cert, "db1.example.com", sessA, 0, body), sessA, 0, body, ca.KindUnauthenticated, "not among the host names"},
		{"certificate of another CA", f.proof(t, f.foreign, "bastion1.example.com", sessA, 0, body), sessA, 0, body, ca.KindUnauthenticated, "not signed by this host CA"},
		{"body changed after signing", f.proof(t, f.cert, "bastion1", sessA, 0, body), sessA, 0, append(bytes.Clone(body), body...), ca.KindUnauthenticated, "batch_sha256"},
		{"proof for another session", f.proof(t, f.cert, "bastion1", "ffffffffffffffffffffffff", 0, body), sessA, 0, body, ca.KindUnauthenticated, "for session"},
		{"proof for another offset", f.proof(t, f.cert, "bastion1", sessA, 1, body), sessA, 0, body, ca.KindUnauthenticated, "from line 1"},
		{"no token", "", sessA, 0, body, ca.KindUnauthenticated, "missing bearer token"},
		{"session ID not the agent's form", f.proof(t, f.cert, "bastion1", "../x", 0, body), "../x", 0, body, ca.KindInvalid, "24 hex digits"},
		{"incomplete last line", f.proof(t, f.cert, "bastion1", sessA, 0, body[:len(body)-1]), sessA, 0, body[:len(body)-1], ca.KindInvalid, "ending in a newline"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := f.newStore()
			got, err := f.a.AcceptRecording(ctx, st, ca.RecordingLimits{}, tt.token, tt.session, tt.offset, tt.body)
			if tt.want == 0 {
				if err != nil || got.Received != 2 {
					t.Fatalf("refused: %+v %v", got, err)
				}
				return
			}
			if ca.KindOf(err) != tt.want || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("got %v (%v), want %v with %q", err, ca.KindOf(err), tt.want, tt.msg)
			}
			if _, found, _ := st.SessionRecording(ctx, sessA); found {
				t.Fatal("a refused batch was kept")
			}
		})
	}

	t.Run("replayed proof", func(t *testing.T) {
		st := f.newStore()
		tok := f.proof(t, f.cert, "bastion1", sessA, 0, body)
		if _, err := f.a.AcceptRecording(ctx, st, ca.RecordingLimits{}, tok, sessA, 0, body); err != nil {
			t.Fatal(err)
		}
		_, err := f.a.AcceptRecording(ctx, st, ca.RecordingLimits{}, tok, sessA, 0, body)
		if ca.KindOf(err) != ca.KindUnauthenticated || !strings.Contains(err.Error(), "already used") {
			t.Fatalf("replay: %v", err)
		}
	})

	t.Run("a recording proof renews nothing and reports nothing", func(t *testing.T) {
		tok := f.proof(t, f.cert, "bastion1.example.com", sessA, 0, body)
		if _, err := f.a.Renew(ctx, tok); ca.KindOf(err) != ca.KindUnauthenticated || !strings.Contains(err.Error(), "payload is not the renewal JSON") &&
			!strings.Contains(err.Error(), "not signed by the certificate's key") {
			t.Fatalf("renew with a recording proof: %v", err)
		}
		rep := []byte(`{"host":"bastion1.example.com","keys":[]}`)
		tok = f.proof(t, f.cert, "bastion1.example.com", sessA, 0, rep)
		if _, _, err := f.a.AcceptDiscovery(ctx, &memDiscoveries{}, tok, rep); ca.KindOf(err) != ca.KindUnauthenticated {
			t.Fatalf("discovery report with a recording proof: %v", err)
		}
	})

	t.Run("session of another host", func(t *testing.T) {
		st := f.newStore()
		if _, err := f.ship(t, st, ca.RecordingLimits{}, rec, 0, 1); err != nil {
			t.Fatal(err)
		}
		b := rec.batch(1, 2)
		_, err := f.a.AcceptRecording(ctx, st, ca.RecordingLimits{}, f.proof(t, f.cert, "bastion1", sessA, 1, b), sessA, 1, b)
		if ca.KindOf(err) != ca.KindDenied || !strings.Contains(err.Error(), "another host") {
			t.Fatalf("other host name continuing the session: %v", err)
		}
	})
}

// TestAcceptRecordingChainAndResume: every line must follow the chain (a changed chunk is
// refused); a resent batch keeps only the lines the CA lacks; a batch from past the CA's lines
// is answered with where they end; the stored lines read back as the agent's file.
func TestAcceptRecordingChainAndResume(t *testing.T) {
	f := newRecordingFixture(t)
	ctx := context.Background()
	rec := newTestRecording(t, sessA, ca.RecordingHeader{User: "root", KeyID: "alice~00#7", Serial: "7", Kind: "exec", Command: "ls"})
	for i := range 5 {
		rec.add(ca.ChunkOutput, fmt.Appendf(nil, "line %d\n", i))
	}
	rec.end(0)
	st := f.newStore()

	if got, err := f.ship(t, st, ca.RecordingLimits{}, rec, 0, 3); err != nil || got.Received != 3 {
		t.Fatalf("first batch: %+v %v", got, err)
	}
	// A line changed on the way (or in the agent's file) does not continue the chain.
	bad := newTestRecording(t, sessA, ca.RecordingHeader{})
	bad.lines = slices.Clone(rec.lines)
	bad.lines[3] = bytes.Replace(bad.lines[3], []byte(`"d":"`), []byte(`"d":"A`), 1)
	if _, err := f.ship(t, st, ca.RecordingLimits{}, bad, 3, 5); ca.KindOf(err) != ca.KindInvalid || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("changed chunk: %v", err)
	}
	// From past the CA's end: told where it ends, nothing kept.
	if got, err := f.ship(t, st, ca.RecordingLimits{}, rec, 4, 6); err != nil || got.Received != 3 {
		t.Fatalf("gap: %+v %v", got, err)
	}
	// A resend that overlaps: only the new lines are kept.
	if got, err := f.ship(t, st, ca.RecordingLimits{}, rec, 1, 5); err != nil || got.Received != 5 {
		t.Fatalf("overlap: %+v %v", got, err)
	}
	// An overlap whose last known line differs from the CA's is another file.
	bad.lines[4] = bytes.Replace(bad.lines[4], []byte(`"h":"`), []byte(`"h":"0`), 1)
	if _, err := f.ship(t, st, ca.RecordingLimits{}, bad, 3, 6); ca.KindOf(err) != ca.KindConflict {
		t.Fatalf("overlap with other lines: %v", err)
	}
	if got, err := f.ship(t, st, ca.RecordingLimits{}, rec, 5, 7); err != nil || got.Received != 7 {
		t.Fatalf("last batch: %+v %v", got, err)
	}
	lines, err := st.RecordingLines(ctx, sessA)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rec.lines, lines); diff != "" {
		t.Fatalf("stored lines differ from the agent's (-agent +stored):\n%s", diff)
	}
	got, err := ca.ReadRecording(bytes.NewReader(rec.batch(0, 7)))
	if err != nil || got.Final != rec.final() || got.End == nil {
		t.Fatalf("read back: %+v %v", got, err)
	}
	// Nothing may follow the end.
	rec.add(ca.ChunkOutput, []byte("late"))
	if _, err := f.ship(t, st, ca.RecordingLimits{}, rec, 7, 8); ca.KindOf(err) != ca.KindInvalid || !errors.Is(err, err) || !strings.Contains(err.Error(), "after the end") {
		t.Fatalf("chunk after the end: %v", err)
	}
}

// TestAcceptRecordingAudit: the header's arrival appends a start record and the end's an end
// record, with the certificate's serial and key ID, the access request the key ID carries,
// the command (exactly, for exec) or the echoed command lines (shell, best effort), and the
// final hash; a batch whose audit record cannot be kept is not kept either.
func TestAcceptRecordingAudit(t *testing.T) {
	f := newRecordingFixture(t)
	ctx := context.Background()
	const keyID = "alice@example.com~0011223344556677/OPS-1/req_abcdefghijklmnop#77"
	exec := newTestRecording(t, sessA, ca.RecordingHeader{User: "root", KeyID: keyID, Serial: "77", Kind: "exec",
		Command: `sh -c 'echo "a  b"'`})
	exec.add(ca.ChunkOutput, []byte("a  b\n"))
	exec.end(3)
	st := f.newStore()
	if _, err := f.ship(t, st, ca.RecordingLimits{}, exec, 0, 3); err != nil {
		t.Fatal(err)
	}
	exit := 3
	wantSession := &ca.SessionAudit{ID: sessA, Host: "bastion1.example.com", User: "root", Kind: "exec", Command: `sh -c 'echo "a  b"'`}
	endSession := *wantSession
	endSession.Commands, endSession.Final, endSession.Exit = []string{`sh -c 'echo "a  b"'`}, exec.final(), &exit
	want := []ca.AuditRecord{
		{Action: ca.ActionSession, Outcome: "started", Event: "start", Identity: "alice@example.com~0011223344556677", Serial: 77, KeyID: keyID,
			AccessRequest: "req_abcdefghijklmnop", Principals: []string{"root"}, Target: "session " + sessA + " on bastion1.example.com as root", Session: wantSession},
		{Action: ca.ActionSession, Outcome: "ended", Event: "end", Identity: "alice@example.com~0011223344556677", Serial: 77, KeyID: keyID,
			AccessRequest: "req_abcdefghijklmnop", Principals: []string{"root"}, Target: "session " + sessA + " on bastion1.example.com as root", Session: &endSession},
	}
	ignore := func(recs []ca.AuditRecord) []ca.AuditRecord {
		out := []ca.AuditRecord{}
		for _, r := range recs {
			r.V, r.Time, r.Issuer, r.Subject, r.Workload = 0, time.Time{}, "", "", false
			r.Session.Start = time.Time{}
			out = append(out, r)
		}
		return out
	}
	if diff := cmp.Diff(want, ignore(f.audit.recs)); diff != "" {
		t.Fatalf("audit records (-want +got):\n%s", diff)
	}

	// An interactive shell: the command lines as echoed after a prompt, split across chunks,
	// with colours and a corrected typo; output lines without a prompt are not commands.
	f.audit.recs = nil
	const sessB = "abcdefabcdefabcdefabcdef"
	shell := newTestRecording(t, sessB, ca.RecordingHeader{User: "root", KeyID: "bob~01#8", Serial: "8", Kind: "shell", PTY: true})
	shell.add(ca.ChunkOutput, []byte("\x1b[01;32mroot@bastion1\x1b[00m:\x1b[01;34m~\x1b[00m# ech"))
	shell.add(ca.ChunkOutput, []byte("o hi\r\nhi\r\nroot@bastion1:~# uname -x\bs\r\nLinux\r\n$ not a prompt? yes it is\r\n"))
	shell.add(ca.ChunkOutput, []byte("plain output line\r\nroot@bastion1:~# exit\r\n"))
	shell.end(0)
	if _, err := f.ship(t, st, ca.RecordingLimits{}, shell, 0, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ship(t, st, ca.RecordingLimits{}, shell, 3, 5); err != nil {
		t.Fatal(err)
	}
	if len(f.audit.recs) != 2 {
		t.Fatalf("want a start and an end record, got %d", len(f.audit.recs))
	}
	end := f.audit.recs[1].Session
	wantCmds := []string{"echo hi", "uname -s", "not a prompt? yes it is", "exit"}
	if diff := cmp.Diff(wantCmds, end.Commands); diff != "" || !end.CommandsBestEffort || end.Final != shell.final() {
		t.Fatalf("shell end record: best effort %v final %s want %s, commands (-want +got):\n%s", end.CommandsBestEffort, end.Final, shell.final(), diff)
	}

	// The audit log is down: the batch is refused and not kept, and kept once it is back.
	const sessC = "cccccccccccccccccccccccc"
	other := newTestRecording(t, sessC, ca.RecordingHeader{User: "root", Kind: "exec", Command: "true"})
	f.audit.err = errors.New("audit down")
	if _, err := f.ship(t, st, ca.RecordingLimits{}, other, 0, 1); ca.KindOf(err) != ca.KindUnavailable {
		t.Fatalf("audit down: %v", err)
	}
	if _, found, _ := st.SessionRecording(ctx, sessC); found {
		t.Fatal("a batch whose start record was not kept was kept")
	}
	f.audit.err = nil
	if got, err := f.ship(t, st, ca.RecordingLimits{}, other, 0, 1); err != nil || got.Received != 1 {
		t.Fatalf("after the audit log is back: %+v %v", got, err)
	}
}

// TestAcceptRecordingCaps: past the session cap and past the host cap the CA keeps no more
// output: one cut line stands for what was left out (counted), the end is still kept, the
// stored recording reads back with its final hash equal to the agent's, and the audit end
// record names the cut.
func TestAcceptRecordingCaps(t *testing.T) {
	f := newRecordingFixture(t)
	ctx := context.Background()
	chunk := bytes.Repeat([]byte("x"), 1000)
	mk := func(id string) *testRecording {
		r := newTestRecording(t, id, ca.RecordingHeader{User: "root", Kind: "exec", Command: "cat /dev/urandom"})
		for range 20 {
			r.add(ca.ChunkOutput, chunk)
		}
		r.end(130)
		return r
	}
	for _, tt := range []struct {
		name string
		lim  ca.RecordingLimits
		cap  string
	}{
		{"session cap", ca.RecordingLimits{SessionCap: 5000, HostCap: 1 << 30}, "session"},
		{"host cap", ca.RecordingLimits{SessionCap: 1 << 30, HostCap: 5000}, "host"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := f.newStore()
			r := mk(sessA)
			for from := 0; from < len(r.lines); from += 7 {
				to := min(from+7, len(r.lines))
				if got, err := f.ship(t, st, tt.lim, r, from, to); err != nil || got.Received != int64(to) {
					t.Fatalf("batch from %d: %+v %v", from, got, err)
				}
			}
			lines, err := st.RecordingLines(ctx, sessA)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			var total int64
			for _, l := range lines {
				b.Write(append(l, '\n'))
				total += int64(len(l))
			}
			if total > 5000+2000 {
				t.Fatalf("%d bytes kept with a cap of 5000", total)
			}
			got, err := ca.ReadRecording(&b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Final != r.final() || got.End == nil || got.End.Exit != 130 || got.Cut.Cap != tt.cap || got.Cut.Chunks == 0 {
				t.Fatalf("read back: final %s (want %s) end %+v cut %+v", got.Final, r.final(), got.End, got.Cut)
			}
			if n := int64(len(got.Chunks)) + got.Cut.Chunks; n != 21 {
				t.Fatalf("%d chunks kept and cut, want 21", n)
			}
			last := f.audit.recs[len(f.audit.recs)-1].Session
			if last.Cut == nil || last.Cut.Cap != tt.cap || last.Final != r.final() {
				t.Fatalf("end record: %+v", last)
			}
			// The host's total counts what was kept (the cut line at its first size: it is
			// rewritten in place as it grows by a few digits).
			if hb, _ := st.HostRecordingBytes(ctx, "bastion1.example.com"); hb > total || hb < total-16 {
				t.Fatalf("host total %d, kept %d", hb, total)
			}
		})
	}
}

// BenchmarkAcceptRecording: the CA's cost of one shipped batch of 8 output chunks of 8 KiB
// (proof check, spent-proof record, chain check, store write in memory), reported per byte of
// output; the agent's side (chaining, signing) is done before the timer starts.
func BenchmarkAcceptRecording(b *testing.B) {
	t := &testing.T{}
	f := newRecordingFixture(t)
	st := f.newStore()
	ctx := context.Background()
	rec := newTestRecording(t, sessA, ca.RecordingHeader{User: "root", Kind: "exec", Command: "cat"})
	if _, err := f.ship(t, st, ca.RecordingLimits{}, rec, 0, 1); err != nil {
		b.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("x"), 8<<10)
	type shipment struct {
		proof string
		from  int64
		batch []byte
	}
	var ships []shipment
	for range b.N {
		from := len(rec.lines)
		for range 8 {
			rec.add(ca.ChunkOutput, chunk)
		}
		batch := rec.batch(from, len(rec.lines))
		ships = append(ships, shipment{f.proof(t, f.cert, "bastion1.example.com", sessA, int64(from), batch), int64(from), batch})
	}
	lim := ca.RecordingLimits{SessionCap: 1 << 40, HostCap: 1 << 40}
	b.SetBytes(8 * int64(len(chunk)))
	b.ResetTimer()
	for _, s := range ships {
		if _, err := f.a.AcceptRecording(ctx, st, lim, s.proof, sessA, s.from, s.batch); err != nil {
			b.Fatal(err)
		}
	}
}
