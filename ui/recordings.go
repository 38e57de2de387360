package ui

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/charmbracelet/x/ansi"

	"github.com/sshca/sshca/ca"
)

// Recordings is the session recordings API (GET /v1/recordings[/{id}], policy kind "read"),
// called with the signed-in user's ID token. ca.RecordingDesk implements it.
type Recordings interface {
	SessionRecordings(ctx context.Context, token string, f ca.RecordingFilter) (ca.RecordingPage, error)
	SessionRecordingLines(ctx context.Context, token, id string) (ca.SessionRecording, [][]byte, error)
}

var _ Recordings = ca.RecordingDesk{}

// recordingState says how far a kept session got: ended (with its exit status), stopped by
// the agent's cap, cut past the CA's cap, or live/unterminated (no end arrived: it runs still
// or its recorder or agent stopped first).
func recordingState(r ca.SessionRecording) string {
	var s string
	switch {
	case r.End != nil:
		s = fmt.Sprintf("ended (exit %d)", r.End.Exit)
	case r.Dropped != "":
		s = "stopped by the bastion's " + r.Dropped + " cap"
	default:
		s = "live or unterminated (no end arrived)"
	}
	if r.Cut != nil {
		s += fmt.Sprintf("; %d chunks (%d bytes) cut past the CA's %s cap", r.Cut.Chunks, r.Cut.Bytes, r.Cut.Cap)
	}
	return s
}

// recordingRow is one session on a request's page.
type recordingRow struct {
	ca.SessionRecording
	State string
}

// bastionClockSkew is how far behind the CA's clock a bastion's may be for its sessions to be
// listed on a request's page: no session runs under a request before the request was created,
// so the listing reads only those that started (bastion time) at most this long before.
const bastionClockSkew = time.Hour

// RecordingsPageLimit is how many recorded sessions a request's page reads at once (those
// started since the request was created, of every request); a "next page" link (?cursor=…)
// reads the next as many.
const RecordingsPageLimit = 1000

// requestRecordings lists the sessions of one page of recordings (after the position the
// cursor names, RecordingsPageLimit of them) whose key ID carries request id, and the link to
// the next page ("" on the last), or says why not: a user the policy does not let read
// recordings gets the API's refusal as a note. The CA indexes recordings by their start as the
// bastion timed it. A cursor the console did not give is Invalid, a 400 page.
func (c *Console) requestRecordings(ctx context.Context, s session, id string, created time.Time, cursor string) ([]recordingRow, string, string, error) {
	if c.o.Recordings == nil {
		return nil, "", "", nil
	}
	after, err := ca.ParseRecordingCursor(cursor)
	if err != nil {
		return nil, "", "", err
	}
	// Every recording since the request was created (an hour of clock skew before), a page at
	// a time; the list shown is those of this request.
	page, err := c.o.Recordings.SessionRecordings(ctx, s.idToken, ca.RecordingFilter{Since: created.Add(-bastionClockSkew), After: after, Limit: RecordingsPageLimit})
	if ca.KindOf(err) == ca.KindDenied {
		return nil, "Session recordings are shown to those the policy lets read them (administrators and auditors).", "", nil
	}
	if err != nil {
		return nil, "", "", err
	}
	var rows []recordingRow
	for _, r := range page.Sessions {
		if r.AccessRequest == id {
			rows = append(rows, recordingRow{SessionRecording: r, State: recordingState(r)})
		}
	}
	next := ""
	if !page.Next.IsZero() {
		next = "/ui/requests/" + url.PathEscape(id) + "?" + url.Values{"cursor": {page.Next.String()}}.Encode()
	}
	return rows, "", next, nil
}

// playLine is one output event of a recording page: its time after the start and its text
// with terminal control removed.
type playLine struct {
	At   string
	Text string
}

// inert makes a terminal's output safe and readable as page text: escape sequences (CSI, OSC,
// DCS, ...) removed by ansi.Strip, then every other control character but newline and tab
// dropped ("\r\n" read as "\n"). html/template escapes what remains.
func inert(s string) string {
	s = ansi.Strip(strings.ReplaceAll(s, "\r\n", "\n"))
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || !unicode.IsControl(r) {
			return r
		}
		return -1
	}, s)
}

// recordingView is the recording page: the CA's record, whether the kept lines' chain
// verified (ca.ReadRecording) with its final hash, and the output.
type recordingView struct {
	ca.SessionRecording
	State    string
	Verified bool
	Problem  string
	Final    string
	Lines    []playLine
}

// load fetches a recording through the API and reads its chain.
func (c *Console) loadRecording(ctx context.Context, s session, id string) (recordingView, *ca.Recording, error) {
	rec, lines, err := c.o.Recordings.SessionRecordingLines(ctx, s.idToken, id)
	if err != nil {
		return recordingView{}, nil, err
	}
	v := recordingView{SessionRecording: rec, State: recordingState(rec)}
	r, err := ca.ReadRecording(bytes.NewReader(bytes.Join(lines, []byte("\n"))))
	if err != nil {
		v.Problem = err.Error()
		return v, nil, nil
	}
	v.Verified, v.Final = true, r.Final
	return v, r, nil
}

func (c *Console) recording(w http.ResponseWriter, r *http.Request, _ string, s session) {
	if c.o.Recordings == nil {
		c.fail(w, s, &ca.Error{Kind: ca.KindNotFound, Msg: "this CA keeps no session recordings"})
		return
	}
	v, rec, err := c.loadRecording(r.Context(), s, r.PathValue("id"))
	if err != nil {
		c.fail(w, s, err)
		return
	}
	if rec != nil {
		for _, e := range ca.CastEvents(rec) {
			if e.Kind != "o" {
				continue
			}
			if t := inert(e.Text); t != "" {
				v.Lines = append(v.Lines, playLine{At: fmt.Sprintf("%d.%06ds", e.T/1e6, e.T%1e6), Text: t})
			}
		}
	}
	c.render(w, http.StatusOK, "recording.html", page{Title: "Session " + v.ID, User: s.user, CSRF: s.csrf, Data: v})
}

// cast downloads the recording as asciicast v2 (ca.ExportAsciicast), only when its chain
// verified: a broken recording is shown on its page, not exported as if it were whole.
func (c *Console) cast(w http.ResponseWriter, r *http.Request, _ string, s session) {
	if c.o.Recordings == nil {
		c.fail(w, s, &ca.Error{Kind: ca.KindNotFound, Msg: "this CA keeps no session recordings"})
		return
	}
	v, rec, err := c.loadRecording(r.Context(), s, r.PathValue("id"))
	if err == nil && rec == nil {
		err = &ca.Error{Kind: ca.KindConflict, Msg: "the recording's chain does not verify (" + v.Problem + "); its page shows what is there"}
	}
	if err != nil {
		c.fail(w, s, err)
		return
	}
	var b bytes.Buffer
	if err := ca.ExportAsciicast(&b, rec); err != nil {
		c.fail(w, s, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-asciicast")
	w.Header().Set("Content-Disposition", "attachment; filename="+url.PathEscape(v.ID)+".cast")
	_, _ = w.Write(b.Bytes())
}
