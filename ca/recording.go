package ca

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// RecordContext is what a recording batch's proof signs besides its payload: neither
// RenewContext nor DiscoverContext, so that a batch's proof never renews a certificate or
// stands for a discovery report, and neither of theirs ships a recording.
const RecordContext = "sshca-record-v1\x00"

// RecordClaims is the payload of a recording batch's proof: the renewal proof's fields (the
// host's current certificate, iat/exp, a single-use jti), the host name it ships under, the
// session, the batch's offset (lines of the session the CA had before it, header included)
// and the SHA-256 (hex) of the batch's exact bytes. The token is base64url(JSON) "."
// base64url(SSH signature of RecordContext + JSON) by the certificate's key.
type RecordClaims struct {
	RenewClaims
	Host        string `json:"host"`
	Session     string `json:"session"`
	Offset      int64  `json:"offset"`
	BatchSHA256 string `json:"batch_sha256"`
}

// SignRecordProof signs a proof for one batch of a session's recording with the host key.
func SignRecordProof(key ssh.Signer, cert *ssh.Certificate, host, session string, offset int64, batch []byte, now time.Time, id string) (string, error) {
	sum := sha256.Sum256(batch)
	payload, err := json.Marshal(RecordClaims{
		RenewClaims: RenewClaims{
			Certificate: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert))),
			IssuedAt:    now.Unix(), Expiry: now.Add(2 * time.Minute).Unix(), ID: id,
		},
		Host: host, Session: session, Offset: offset, BatchSHA256: hex.EncodeToString(sum[:]),
	})
	if err != nil {
		return "", err
	}
	sig, err := key.Sign(nil, append([]byte(RecordContext), payload...))
	if err != nil {
		return "", fmt.Errorf("sign recording proof: %w", err)
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(ssh.Marshal(sig)), nil
}

// SessionRecording is what the CA knows of one recorded session besides its lines: the
// header as the agent wrote it, the host name of the proofs that shipped it, how far it
// arrived and what it held. The store keeps it as JSON beside the lines.
type SessionRecording struct {
	ID     string          `json:"id"`
	Host   string          `json:"host"` // the host name of the shipping proofs (a name of its certificate)
	Header RecordingHeader `json:"header"`
	// Identity is the key ID's identity part (before the first '/' or '#'); AccessRequest the
	// access request ID the key ID carries, if any.
	Identity      string `json:"identity,omitempty"`
	AccessRequest string `json:"access_request,omitempty"`
	// Received is how many lines of the agent's file arrived, header included: the offset of
	// the next batch. Kept and Bytes count the lines the CA stored (a cut line stands for
	// many).
	Received int64 `json:"received"`
	Kept     int64 `json:"kept"`
	Bytes    int64 `json:"bytes"`
	// Last is the chain's hex hash after the last line received.
	Last string `json:"last"`
	// Cut is what the CA did not keep past its caps (nil: nothing); CutOpen says the last kept
	// line is the cut line, which later cuts replace.
	Cut     *RecordingCut `json:"cut,omitempty"`
	CutOpen bool          `json:"cut_open,omitempty"`
	// Dropped names the agent's cap that stopped its recording ("" when none did).
	Dropped string        `json:"dropped,omitempty"`
	End     *RecordingEnd `json:"end,omitempty"`
	// Commands are what the session ran: $SSH_ORIGINAL_COMMAND (or the certificate's
	// force-command) exactly for an exec session; for an interactive shell, the command lines
	// as the terminal echoed them, taken from the output (CommandsBestEffort: what was typed
	// with echo off, or redrawn by an editor, is not there). At most MaxSessionCommands.
	Commands           []string `json:"commands,omitempty"`
	CommandsBestEffort bool     `json:"commands_best_effort,omitempty"`
	// Pending is the shell's current output line, not yet ended (at most 4 KiB).
	Pending string    `json:"pending,omitempty"`
	Started time.Time `json:"started"` // CA clock, first batch
	Updated time.Time `json:"updated"` // CA clock, last batch
}

// Live says the session has not ended as far as the CA knows (no end chunk arrived): it runs
// still, or its recorder or agent stopped before its end (unterminated).
func (r SessionRecording) Live() bool { return r.End == nil }

// RecordingStore keeps shipped recordings, on a Redis of its own (recordings.redis): nothing
// it holds is needed to issue or revoke, and nothing it writes can fill the store that is.
type RecordingStore interface {
	// SessionRecording is the session's record; false when none.
	SessionRecording(ctx context.Context, id string) (SessionRecording, bool, error)
	// AppendRecording stores rec as the session's record and appends lines after its kept
	// lines (replacing the last one first when replaceLast), only if the stored record's
	// Received is still prev (no record at all when prev is 0): false, and nothing written,
	// otherwise. It adds the bytes of lines to rec.Host's total (HostRecordingBytes).
	AppendRecording(ctx context.Context, rec SessionRecording, prev int64, replaceLast bool, lines [][]byte) (bool, error)
	// HostRecordingBytes is the bytes of lines kept of the host's sessions.
	HostRecordingBytes(ctx context.Context, host string) (int64, error)
	// RecordingLines are the session's kept lines, in order, without newlines.
	RecordingLines(ctx context.Context, id string) ([][]byte, error)
	// SessionRecordings lists the records of sessions started at or after since, oldest first
	// (RecordingCursor order), after the position after, at most limit (0: all); next is where
	// the next page starts, zero when none is left. Pages neither skip nor repeat a recording
	// kept throughout.
	SessionRecordings(ctx context.Context, since time.Time, after RecordingCursor, limit int) (page []SessionRecording, next RecordingCursor, err error)
	// UseRecordProof spends a proof's jti until its expiry: false when it was spent before.
	UseRecordProof(ctx context.Context, id string, until time.Time) (bool, error)
}

// RecordingLimits are the CA's caps on what it keeps of recordings, in bytes of stored lines
// (JSON, base64 data: about 4/3 of the output). Output past a cap is not kept: one cut line
// says how many chunks and bytes were left out, and the audit's end record says so too.
type RecordingLimits struct {
	SessionCap int64 // 0: DefaultRecordingSessionCap
	HostCap    int64 // 0: DefaultRecordingHostCap
}

// Defaults of RecordingLimits, and the largest batch the CA takes.
const (
	DefaultRecordingSessionCap = 64 << 20
	DefaultRecordingHostCap    = 4 << 30
	MaxRecordingBatch          = 1 << 20
	// MaxSessionCommands bounds SessionRecording.Commands; maxCommandLine each command line.
	MaxSessionCommands = 1000
	maxCommandLine     = 1024
	maxPendingLine     = 4096
	maxEndLine         = 1024
)

// ActionSession is the audit action of a recorded session's start and end, appended by the
// CA on its agent's report (not a policy kind: the host's proof is what admits the report).
const ActionSession Action = "session"

// SessionAudit is what a session's audit records hold (AuditRecord.Session): the session, its
// host and account, what it ran, and at its end the recording's final hash and how it ended.
type SessionAudit struct {
	ID                 string    `json:"id"`
	Host               string    `json:"host"`
	User               string    `json:"user"`
	Kind               string    `json:"kind"`
	Command            string    `json:"command,omitempty"`
	ForceCommand       bool      `json:"force_command,omitempty"`
	Start              time.Time `json:"start"` // the agent's clock
	Spooled            bool      `json:"spooled,omitempty"`
	Commands           []string  `json:"commands,omitempty"`
	CommandsBestEffort bool      `json:"commands_best_effort,omitempty"`
	// Final is the chain's hash after the end chunk (end record only).
	Final   string        `json:"final,omitempty"`
	Exit    *int          `json:"exit,omitempty"`
	Dropped string        `json:"dropped,omitempty"`
	Cut     *RecordingCut `json:"cut,omitempty"`
}

// RecordingAccepted is the answer to a batch: how many of the session's lines the CA has now.
// The agent sends its next batch from there, also after a restart or a batch that did not
// follow (a lower or higher offset than the CA's).
type RecordingAccepted struct {
	Session  string `json:"session"`
	Received int64  `json:"received"`
}

var (
	accessRequestInKeyID = regexp.MustCompile(`(?:^|/)(req_[a-z2-7]{16})(?:/|#|$)`)
	sessionIDRE          = regexp.MustCompile(`^[0-9a-f]{24}$`)
)

// KeyIDIdentity is the identity part of a key ID: up to its first '/' (a ticket, an access
// request follow) or '#' (the serial).
func KeyIDIdentity(keyID string) string {
	if i := strings.IndexAny(keyID, "/#"); i >= 0 {
		return keyID[:i]
	}
	return keyID
}

// KeyIDAccessRequest is the access request ID a key ID carries ("" when none).
func KeyIDAccessRequest(keyID string) string {
	if m := accessRequestInKeyID.FindStringSubmatch(keyID); m != nil {
		return m[1]
	}
	return ""
}

// AcceptRecording keeps one batch of a session's recording as an agent ships it: batch is
// complete JSON lines (each ending in '\n') of the agent's file from line offset (0: the
// header first). The proof must be signed with RecordContext by the key of a current,
// unrevoked host certificate of ours, for this session, offset and exact bytes, under a host
// name of that certificate, and never used before (401 otherwise). Each line must follow the
// chain (400 otherwise). A batch that does not start where the CA's lines end is answered
// with where they do, and keeps only what follows them.
//
// The CA appends an audit record when the header arrives and when the end does, before it
// keeps the batch: a batch whose record cannot be kept is refused (503) and sent again.
func (a *Authority) AcceptRecording(ctx context.Context, st RecordingStore, lim RecordingLimits, token, session string, offset int64, batch []byte) (RecordingAccepted, error) {
	out := RecordingAccepted{Session: session}
	var c RecordClaims
	cert, err := a.verifyHostProof(ctx, token, RecordContext, "recording", &c, &c.RenewClaims)
	if err != nil {
		return out, err
	}
	sum := sha256.Sum256(batch)
	switch {
	case c.Session != session || c.Offset != offset:
		return out, Unauthenticated(fmt.Sprintf("recording token rejected: it is for session %q from line %d, not %q from line %d; sign the batch you send", c.Session, c.Offset, session, offset), nil)
	case c.BatchSHA256 != hex.EncodeToString(sum[:]):
		return out, Unauthenticated("recording token rejected: batch_sha256 is not the SHA-256 of the body sent; sign the body you send", nil)
	case !slices.Contains(cert.ValidPrincipals, c.Host):
		return out, Unauthenticated(fmt.Sprintf("recording token rejected: host %q is not among the host names of the certificate; ship under one of %q", c.Host, cert.ValidPrincipals), nil)
	case c.ID == "":
		return out, Unauthenticated("recording token rejected: no jti (each proof is used once)", nil)
	}
	if !sessionIDRE.MatchString(session) {
		return out, Invalid("session %q: want the 24 hex digits the agent names sessions with", session)
	}
	if offset < 0 {
		return out, Invalid("offset %d: want the number of lines the CA has (0 for a new session)", offset)
	}
	lines, err := splitBatch(batch)
	if err != nil {
		return out, err
	}
	fresh, err := st.UseRecordProof(ctx, "record|"+c.ID, time.Unix(c.Expiry, 0))
	if err != nil {
		return out, recordingStoreErr(err)
	}
	if !fresh {
		return out, Unauthenticated("recording token already used: sign a new proof for each batch", nil)
	}
	lim = lim.withDefaults()

	rec, found, err := st.SessionRecording(ctx, session)
	if err != nil {
		return out, recordingStoreErr(err)
	}
	if found && rec.Host != c.Host {
		return out, Denied("session "+session+" is recorded by another host", "ship only the sessions this host recorded")
	}
	prev := rec.Received
	// Skip what the CA has already: a resend after a lost answer or an agent's restart. The
	// last line skipped must be the one the CA's chain ends with, or these are other lines.
	if offset > prev || offset+int64(len(lines)) <= prev {
		out.Received = prev
		return out, nil
	}
	skip := prev - offset
	if skip > 0 {
		if lineHash(lines[skip-1], offset == 0 && skip == 1) != rec.Last {
			return out, &Error{Kind: KindConflict, Msg: fmt.Sprintf("session %s: line %d sent is not the line the CA has; the agent's file differs from what it shipped", session, prev)}
		}
		lines = lines[skip:]
	}

	var chain *RecordingChain
	var startAudit bool
	now := a.now().UTC()
	if !found {
		var h RecordingHeader
		chain, h, err = StartRecordingChain(lines[0])
		if err != nil {
			return out, Invalid("recording line 1: %v; the first line of a session is its header", err)
		}
		if h.ID != session {
			return out, Invalid("recording header: id %q differs from the session %q shipped", h.ID, session)
		}
		rec = SessionRecording{ID: session, Host: c.Host, Header: h, Identity: KeyIDIdentity(h.KeyID),
			AccessRequest: KeyIDAccessRequest(h.KeyID), Started: now}
		if h.Kind == "shell" {
			rec.CommandsBestEffort = true
		} else if h.Command != "" {
			rec.Commands = []string{h.Command}
		}
		rec.Received, rec.Kept, rec.Bytes = 1, 1, int64(len(lines[0]))
		startAudit = true
	} else {
		if chain, err = ResumeRecordingChain(rec.Last, rec.End != nil); err != nil {
			return out, &Error{Kind: KindInternal, Msg: "session " + session + ": stored record unreadable", Err: err}
		}
	}
	hostBytes, err := st.HostRecordingBytes(ctx, c.Host)
	if err != nil {
		return out, recordingStoreErr(err)
	}
	var keep [][]byte
	if startAudit {
		keep = append(keep, lines[0])
		lines = lines[1:]
	}
	replaceLast, endedNow := false, false
	var added int64
	for i, line := range lines {
		ch, err := chain.Next(line, false)
		if err != nil {
			return out, Invalid("recording line %d: %v; the line does not continue the recording", prev+int64(i)+1+boolInt(startAudit), err)
		}
		rec.Received++
		switch ch.Kind {
		case ChunkEnd:
			var e RecordingEnd
			if len(line) > maxEndLine || json.Unmarshal(ch.Data, &e) != nil {
				return out, Invalid("recording line %d: the end chunk is not a short JSON object {exit, dropped}", rec.Received)
			}
			rec.End, endedNow = &e, true
		case ChunkDrop:
			var d RecordingDrop
			if json.Unmarshal(ch.Data, &d) == nil {
				rec.Dropped = d.Cap
			}
		case ChunkOutput, ChunkStderr:
			if rec.Header.Kind == "shell" && len(rec.Commands) < MaxSessionCommands {
				rec.Commands, rec.Pending = shellCommands(rec.Commands, rec.Pending, ch.Data)
			}
		}
		n := int64(len(line))
		capHit := ""
		switch {
		case ch.Kind == ChunkEnd:
			// Always kept: one short line per session, and what verify needs to see the end.
		case rec.Cut != nil:
			capHit = rec.Cut.Cap
		case rec.Bytes+added+n > lim.SessionCap:
			capHit = "session"
		case hostBytes+added+n > lim.HostCap:
			capHit = "host"
		}
		if capHit != "" {
			if rec.Cut == nil {
				rec.Cut = &RecordingCut{Cap: capHit}
			}
			rec.Cut.Chunks++
			rec.Cut.Bytes += n
			cut, _ := json.Marshal(RecordingChunk{Kind: ChunkCut, Hash: chain.Last(), Cut: rec.Cut})
			if rec.CutOpen {
				if len(keep) > 0 {
					keep[len(keep)-1] = cut
				} else {
					replaceLast = true
					keep = append(keep, cut)
				}
			} else {
				keep = append(keep, cut)
				rec.Kept++
				added += int64(len(cut))
				rec.CutOpen = true
			}
			continue
		}
		rec.CutOpen = false
		keep = append(keep, line)
		rec.Kept++
		added += n
	}
	rec.Bytes += added
	rec.Last = chain.Last()
	rec.Updated = now
	if rec.Pending != "" && len(rec.Pending) > maxPendingLine {
		rec.Pending = rec.Pending[len(rec.Pending)-maxPendingLine:]
	}
	if startAudit {
		if err := a.keepSessionAudit(ctx, rec, "start"); err != nil {
			return out, err
		}
	}
	if endedNow {
		if err := a.keepSessionAudit(ctx, rec, "end"); err != nil {
			return out, err
		}
	}
	ok, err := st.AppendRecording(ctx, rec, prev, replaceLast, keep)
	if err != nil {
		return out, recordingStoreErr(err)
	}
	if !ok {
		return out, &Error{Kind: KindConflict, Msg: "session " + session + ": another batch arrived at the same time; send again from the line the CA answers"}
	}
	out.Received = rec.Received
	return out, nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// lineHash is the chain's hex hash after a line: the header's start, or the chunk's hash.
func lineHash(line []byte, header bool) string {
	if header {
		h := RecordingChainStart(line)
		return hex.EncodeToString(h[:])
	}
	var ch RecordingChunk
	if json.Unmarshal(line, &ch) != nil {
		return ""
	}
	return ch.Hash
}

// splitBatch cuts a batch into its lines: complete ones only, each at most maxRecordingLine.
func splitBatch(batch []byte) ([][]byte, error) {
	if len(batch) == 0 || batch[len(batch)-1] != '\n' {
		return nil, Invalid("recording batch: want one or more complete JSON lines, each ending in a newline")
	}
	lines := bytes.Split(batch[:len(batch)-1], []byte{'\n'})
	for i, l := range lines {
		if len(l) == 0 || len(l) > maxRecordingLine {
			return nil, Invalid("recording batch: line %d is empty or longer than 4 MiB", i+1)
		}
	}
	return lines, nil
}

func (l RecordingLimits) withDefaults() RecordingLimits {
	if l.SessionCap <= 0 {
		l.SessionCap = DefaultRecordingSessionCap
	}
	if l.HostCap <= 0 {
		l.HostCap = DefaultRecordingHostCap
	}
	return l
}

// recordingStoreErr is a failure of the recording store: a 503 that says it is that store (the
// one issuance and revocation do not use) and, when it is full, how to make room.
func recordingStoreErr(err error) error {
	var reply storeReply
	if errors.As(err, &reply) && strings.HasPrefix(reply.Error(), "OOM ") {
		return Unavailable("recording store is full (its Redis reached maxmemory): nothing of this batch was kept; raise that Redis's maxmemory or lower recordings.session_cap and recordings.host_cap (issuance does not use this store)", err)
	}
	return storeErr("recording store unavailable: nothing of this batch was kept; send it again", err)
}

// keepSessionAudit appends a session's start or end record.
func (a *Authority) keepSessionAudit(ctx context.Context, rec SessionRecording, event string) error {
	if a.audit == nil {
		return nil
	}
	h := rec.Header
	s := &SessionAudit{ID: rec.ID, Host: rec.Host, User: h.User, Kind: h.Kind, Command: h.Command, ForceCommand: h.ForceCommand,
		Start: h.Start, Spooled: h.Spooled}
	outcome := "started"
	if event == "end" {
		outcome = "ended"
		s.Commands, s.CommandsBestEffort = rec.Commands, rec.CommandsBestEffort
		s.Final, s.Dropped, s.Cut = rec.Last, rec.Dropped, rec.Cut
		exit := rec.End.Exit
		s.Exit = &exit
	}
	serial, _ := strconv.ParseUint(h.Serial, 10, 64)
	ar := AuditRecord{V: AuditRecordVersion, Time: a.now().UTC(), Action: ActionSession, Outcome: outcome, Event: event,
		Identity: rec.Identity, Issuer: "sshca:record", Subject: rec.Host, Workload: true, Serial: serial, KeyID: h.KeyID,
		AccessRequest: rec.AccessRequest, Principals: []string{h.User},
		Target: fmt.Sprintf("session %s on %s as %s", rec.ID, rec.Host, h.User), Session: s, RequestID: RequestID(ctx)}
	// Kept once per session and event (sessionOnce): the agent sends a batch again after any
	// failure, including one after this record was kept (its answer lost, or the recording
	// store failing next), and the session is still one start and one end.
	if err := a.appendOnce(ctx, ar, sessionOnce(rec.Host, rec.ID, event)); err != nil {
		return storeErr("audit log unavailable: nothing of the batch was kept, and the session's "+event+" record may or may not have been (it is not kept twice); send the batch again", err)
	}
	return nil
}

// sessionOnce is the Once key of a session's start or end record: the first 64 bits of
// SHA-256 over the host, the session ID and the event, so every attempt at that record
// (the agent sending a batch again) carries the same key, and two sessions do not (0, no
// key, is never returned).
func sessionOnce(host, id, event string) uint64 {
	h := sha256.Sum256([]byte("sshca-session-audit\x00" + host + "\x00" + id + "\x00" + event))
	return max(binary.BigEndian.Uint64(h[:8]), 1)
}

// ansiSequence matches the terminal control sequences a shell's echo carries: CSI (colours,
// cursor moves, bracketed paste), OSC (window titles) and two-byte escapes.
var ansiSequence = regexp.MustCompile(`\x1b\[[0-9;?<=>!]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]`)

// promptLine matches a rendered output line that starts with a shell prompt: one word ending
// in '$' or '#' ("$", "#", "user@host:~$", "root@host:/tmp#"), a space, then the command.
var promptLine = regexp.MustCompile(`^[^\s$#]*[$#] (.*\S)\s*$`)

// shellCommands adds the command lines of an interactive shell's output to cmds: each output
// line (backspaces applied, control sequences removed) that starts with a prompt. pending is
// the output's unfinished last line, carried between chunks. Best effort by nature: it sees
// what the terminal echoed, not what the shell ran.
func shellCommands(cmds []string, pending string, data []byte) ([]string, string) {
	buf := pending + string(data)
	for {
		i := strings.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		line := renderLine(buf[:i])
		buf = buf[i+1:]
		if m := promptLine.FindStringSubmatch(line); m != nil && len(cmds) < MaxSessionCommands {
			cmd := m[1]
			if len(cmd) > maxCommandLine {
				cmd = cmd[:maxCommandLine]
			}
			cmds = append(cmds, cmd)
		}
	}
	return cmds, buf
}

// renderLine is a line as a terminal would show it, roughly: escape sequences removed,
// backspaces erase, a carriage return starts the line over only when text follows it.
func renderLine(s string) string {
	s = ansiSequence.ReplaceAllString(s, "")
	if i := strings.LastIndexByte(strings.TrimRight(s, "\r"), '\r'); i >= 0 {
		s = s[i+1:]
	}
	var out []rune
	for _, r := range s {
		switch {
		case r == '\b':
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		case r == '\r' || r == '\a' || r < 0x20 && r != '\t':
		default:
			out = append(out, r)
		}
	}
	return string(out)
}

// RecordingFilter selects session recordings: by the key ID's identity part (Identity), the
// account (Principal), a start at or after Since, and sessions without an end (Live).
type RecordingFilter struct {
	Identity  string
	Principal string
	Since     time.Time
	Live      bool
	// After is where the page starts (RecordingPage.Next of the page before; zero: the first),
	// Limit how many recordings of the index one page reads (0: all). The other fields are
	// applied to what was read, so a page may hold fewer, even none, and still have a Next.
	After RecordingCursor
	Limit int
}

// RecordingPage is one page of recorded sessions and where the next starts (zero: none).
type RecordingPage struct {
	Sessions []SessionRecording
	Next     RecordingCursor
}

// RecordingCursor is a position in the recording index's order: by the session's start (unix
// ms, Header.Start), then by its ID compared as text. Zero (no ID) is the start.
type RecordingCursor struct {
	Start int64 // unix ms
	ID    string
}

// IsZero reports whether c is the start.
func (c RecordingCursor) IsZero() bool { return c.ID == "" }

// RecordingCursorOf is the position of r.
func RecordingCursorOf(r SessionRecording) RecordingCursor {
	return RecordingCursor{Start: r.Header.Start.UnixMilli(), ID: r.ID}
}

// Compare orders cursors as the index does: -1 when c comes before d, 0 equal, +1 after.
func (c RecordingCursor) Compare(d RecordingCursor) int {
	if n := cmp.Compare(c.Start, d.Start); n != 0 {
		return n
	}
	return strings.Compare(c.ID, d.ID)
}

// recordingCursorVersion prefixes an encoded RecordingCursor.
const recordingCursorVersion = "r1"

// String encodes c as the opaque next_cursor of GET /v1/recordings: base64url (unpadded) of
// "r1:<start ms>:<session ID>"; "" for the start.
func (c RecordingCursor) String() string {
	if c.IsZero() {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(recordingCursorVersion + ":" + strconv.FormatInt(c.Start, 10) + ":" + c.ID))
}

// ParseRecordingCursor decodes what String made; "" is the start. Anything else is Invalid
// naming the cursor (as ParseCertCursor).
func ParseRecordingCursor(s string) (RecordingCursor, error) {
	if s == "" {
		return RecordingCursor{}, nil
	}
	bad := Invalid("cursor %.40q is not one this server gave: pass the next_cursor of the page before as it is, or leave cursor out to start from the first page", s)
	if len(s) > 80 || !base64URLOnly(s) {
		return RecordingCursor{}, bad
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s) // Strict: one encoding a position, no stray bits
	if err != nil {
		return RecordingCursor{}, bad
	}
	parts := strings.Split(string(b), ":")
	if len(parts) != 3 || parts[0] != recordingCursorVersion || !canonicalDigits(parts[1]) || !sessionIDRE.MatchString(parts[2]) {
		return RecordingCursor{}, bad
	}
	ms, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || ms > maxCursorMS {
		return RecordingCursor{}, bad
	}
	return RecordingCursor{Start: ms, ID: parts[2]}, nil
}

func (f RecordingFilter) target() string {
	t := "list session recordings"
	if f.Identity != "" {
		t += " of " + f.Identity
	}
	if f.Principal != "" {
		t += " as " + f.Principal
	}
	if !f.Since.IsZero() {
		t += " since " + f.Since.UTC().Format(time.RFC3339)
	}
	if f.Live {
		t += " live"
	}
	return t
}

// SessionRecordings lists a page of the recorded sessions the filter selects (policy kind
// "read"), oldest first: at most f.Limit of the index after f.After, then filtered.
func (a *Authority) SessionRecordings(ctx context.Context, st RecordingStore, token string, f RecordingFilter) (RecordingPage, error) {
	if f.Limit < 0 {
		return RecordingPage{}, Invalid("limit %d is negative: give how many recordings a page may hold", f.Limit)
	}
	if err := a.Authorize(ctx, token, ActionRead, f.target()); err != nil {
		return RecordingPage{}, err
	}
	recs, next, err := st.SessionRecordings(ctx, f.Since, f.After, f.Limit)
	if err != nil {
		return RecordingPage{}, recordingStoreErr(err)
	}
	out := []SessionRecording{}
	for _, r := range recs {
		if (f.Identity != "" && r.Identity != f.Identity && r.Header.KeyID != f.Identity) ||
			(f.Principal != "" && r.Header.User != f.Principal) || (f.Live && !r.Live()) {
			continue
		}
		r.Pending = ""
		out = append(out, r)
	}
	return RecordingPage{Sessions: out, Next: next}, nil
}

// SessionRecordingLines is one session's record and its kept lines (policy kind "read").
func (a *Authority) SessionRecordingLines(ctx context.Context, st RecordingStore, token, id string) (SessionRecording, [][]byte, error) {
	if !sessionIDRE.MatchString(id) {
		return SessionRecording{}, nil, Invalid("session %q: want the 24 hex digits sshca sessions list prints", id)
	}
	if err := a.Authorize(ctx, token, ActionRead, "read session recording "+id); err != nil {
		return SessionRecording{}, nil, err
	}
	rec, found, err := st.SessionRecording(ctx, id)
	if err != nil {
		return rec, nil, recordingStoreErr(err)
	}
	if !found {
		return rec, nil, &Error{Kind: KindNotFound, Msg: "no recording of session " + id + " at the CA (sshca sessions list shows those there)"}
	}
	lines, err := st.RecordingLines(ctx, id)
	if err != nil {
		return rec, nil, recordingStoreErr(err)
	}
	rec.Pending = ""
	return rec, lines, nil
}

// RecordingDesk binds the authority's recording calls to the store and caps the server wires.
type RecordingDesk struct {
	Authority *Authority
	Store     RecordingStore
	Limits    RecordingLimits
}

// AcceptRecording is Authority.AcceptRecording on the desk's store and caps.
func (d RecordingDesk) AcceptRecording(ctx context.Context, token, session string, offset int64, batch []byte) (RecordingAccepted, error) {
	return d.Authority.AcceptRecording(ctx, d.Store, d.Limits, token, session, offset, batch)
}

// SessionRecordings is Authority.SessionRecordings on the desk's store.
func (d RecordingDesk) SessionRecordings(ctx context.Context, token string, f RecordingFilter) (RecordingPage, error) {
	return d.Authority.SessionRecordings(ctx, d.Store, token, f)
}

// SessionRecordingLines is Authority.SessionRecordingLines on the desk's store.
func (d RecordingDesk) SessionRecordingLines(ctx context.Context, token, id string) (SessionRecording, [][]byte, error) {
	return d.Authority.SessionRecordingLines(ctx, d.Store, token, id)
}
