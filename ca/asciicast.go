package ca

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// asciicastHeader is the first line of an asciicast v2 file
// (https://docs.asciinema.org/manual/asciicast/v2/).
type asciicastHeader struct {
	Version   int    `json:"version"`
	Width     int    `json:"width"`
	Height    int    `json:"height"`
	Timestamp int64  `json:"timestamp,omitempty"` // Unix seconds
	Command   string `json:"command,omitempty"`
	Title     string `json:"title,omitempty"`
}

// CastEvent is one event of a recording's rendering: at T microseconds after the header's
// Start, Kind "o" with Text the output, or "r" with Text "COLSxROWS". Text is valid UTF-8 and
// still holds whatever terminal escape sequences the session wrote.
type CastEvent struct {
	T    int64
	Kind string
	Text string
}

// CastEvents renders r's output and window changes as text events, one per output chunk that
// completes some text and one per resize. The events are a rendering, not evidence (the chain
// is over the raw recording): a multibyte UTF-8 sequence split across chunks is joined into
// the event of the chunk that completes it, and each byte that is not part of valid UTF-8
// becomes U+FFFD; an incomplete sequence at the very end comes out at the last chunk's time.
func CastEvents(r *Recording) []CastEvent {
	var (
		u    utf8Joiner
		out  []CastEvent
		last int64
	)
	for _, c := range r.Chunks {
		last = c.T
		switch c.Kind {
		case ChunkOutput, ChunkStderr:
			if text := u.next(c.Data); text != "" {
				out = append(out, CastEvent{T: c.T, Kind: "o", Text: text})
			}
		case ChunkResize:
			out = append(out, CastEvent{T: c.T, Kind: "r", Text: string(c.Data)})
		}
	}
	if text := u.flush(); text != "" {
		out = append(out, CastEvent{T: last, Kind: "o", Text: text})
	}
	return out
}

// ExportAsciicast writes r as asciicast v2: a header line, then one [seconds, "o", text] event
// per output chunk and [seconds, "r", "COLSxROWS"] per window change, as CastEvents renders
// them. A terminal size unknown to the recording is 80x24.
func ExportAsciicast(w io.Writer, r *Recording) error {
	h := asciicastHeader{Version: 2, Width: r.Header.Cols, Height: r.Header.Rows, Timestamp: r.Header.Start.Unix(),
		Command: r.Header.Command, Title: fmt.Sprintf("%s@%s %s", r.Header.User, r.Header.Host, r.Header.ID)}
	if h.Width <= 0 || h.Height <= 0 {
		h.Width, h.Height = 80, 24
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(h); err != nil {
		return err
	}
	for _, e := range CastEvents(r) {
		if err := enc.Encode([]any{json.Number(fmt.Sprintf("%d.%06d", e.T/1e6, e.T%1e6)), e.Kind, e.Text}); err != nil {
			return err
		}
	}
	return nil
}

// utf8Joiner turns a stream of byte chunks into valid UTF-8 text, holding back an incomplete
// sequence at the end of a chunk until the next one.
type utf8Joiner struct{ pending []byte }

func (u *utf8Joiner) next(p []byte) string {
	buf := append(u.pending, p...)
	cut := len(buf)
	// An incomplete sequence can only start in the last three bytes.
	for i := len(buf) - 1; i >= 0 && i >= len(buf)-3; i-- {
		if utf8.RuneStart(buf[i]) {
			if !utf8.FullRune(buf[i:]) {
				cut = i
			}
			break
		}
	}
	u.pending = append([]byte(nil), buf[cut:]...)
	return validUTF8(buf[:cut])
}

func (u *utf8Joiner) flush() string {
	s := validUTF8(u.pending)
	u.pending = nil
	return s
}

// validUTF8 replaces each byte that does not begin a valid sequence with U+FFFD.
func validUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var s strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n == 1 {
			s.WriteRune(utf8.RuneError)
		} else {
			s.Write(b[:n])
		}
		b = b[n:]
	}
	return s.String()
}
