package bastion

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// A recording is JSON lines: one RecordingHeader, then one RecordingChunk per line. The agent
// writes it as the chunks arrive, so a recording whose session was cut short is a prefix with no
// "end" chunk: Verify reports it as unterminated, never as invalid.
//
// The chain: h0 = SHA-256(recordingContext || header line without its newline); each chunk's
// hash is SHA-256(previous hash || len(kind) as one byte || kind || T as uint64 big-endian ||
// len(data) as uint64 big-endian || data). It runs over the raw bytes the session produced,
// before any rendering (export replaces invalid UTF-8; the chain never sees that).
const recordingContext = "sshca-recording-v1\x00"

// Chunk kinds.
const (
	ChunkOutput = "o"    // the session's output (a pty's, or stdout)
	ChunkStderr = "e"    // stderr of a session without a pty
	ChunkInput  = "i"    // input, only when input recording is on
	ChunkResize = "r"    // window size, data "COLSxROWS"
	ChunkDrop   = "drop" // a cap was reached: data is the JSON RecordingDrop; nothing more is kept
	ChunkEnd    = "end"  // the session ended: data is the JSON RecordingEnd
)

// RecordingHeader opens a recording. Fields from the recorder (user, certificate, command) are
// what the recorder said; fields from the agent (ID, Start, Peer) are what the agent saw.
type RecordingHeader struct {
	Version int       `json:"v"`
	ID      string    `json:"id"`
	Start   time.Time `json:"start"`
	Host    string    `json:"host,omitempty"`
	User    string    `json:"user"`
	KeyID   string    `json:"key_id,omitempty"`
	Serial  string    `json:"serial,omitempty"` // decimal uint64
	// Command is what ran: the certificate's force-command, $SSH_ORIGINAL_COMMAND exactly, or
	// empty for a login shell.
	Command      string `json:"command,omitempty"`
	ForceCommand bool   `json:"force_command,omitempty"` // Command came from the certificate
	Kind         string `json:"kind"`                    // "exec", "shell" or "sftp"
	PTY          bool   `json:"pty"`
	Cols         int    `json:"cols,omitempty"`
	Rows         int    `json:"rows,omitempty"`
	// Spooled marks a recording written by the recorder itself because the agent was
	// unreachable: it is written as the session user, who could have changed it, so its chain
	// proves nothing against that user.
	Spooled bool        `json:"spooled,omitempty"`
	Peer    *RecordPeer `json:"peer,omitempty"`
}

// RecordPeer is the recorder process as the kernel named it to the agent (SO_PEERCRED), and
// the sshd session process it runs under.
type RecordPeer struct {
	PID     int `json:"pid"`
	UID     int `json:"uid"`
	GID     int `json:"gid"`
	SSHDPID int `json:"sshd_pid"`
}

// RecordingChunk is one line after the header. T is microseconds since the header's Start, as
// the writer (the agent) timed the chunk's arrival.
type RecordingChunk struct {
	T    int64  `json:"t"`
	Kind string `json:"k"`
	Data []byte `json:"d,omitempty"` // base64 in JSON
	Hash string `json:"h"`           // hex SHA-256 of the chain up to and including this chunk
}

// RecordingDrop is the data of a ChunkDrop chunk.
type RecordingDrop struct {
	Cap string `json:"cap"` // "session" or "host"
}

// RecordingEnd is the data of the ChunkEnd chunk.
type RecordingEnd struct {
	Exit    int   `json:"exit"`              // the child's exit status; 128+n for signal n
	Dropped int64 `json:"dropped,omitempty"` // bytes not kept because of a cap
}

func chainStart(headerLine []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(recordingContext))
	h.Write(headerLine)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func chainNext(prev [32]byte, kind string, t int64, data []byte) [32]byte {
	h := sha256.New()
	h.Write(prev[:])
	h.Write([]byte{byte(len(kind))})
	h.Write([]byte(kind))
	var n [16]byte
	binary.BigEndian.PutUint64(n[:8], uint64(t))
	binary.BigEndian.PutUint64(n[8:], uint64(len(data)))
	h.Write(n[:])
	h.Write(data)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// chainWriter writes a recording, one unbuffered Write per line so that what was said is on
// disk before the next chunk arrives.
type chainWriter struct {
	w     io.Writer
	start time.Time
	now   func() time.Time
	last  [32]byte
}

func newChainWriter(w io.Writer, h RecordingHeader, now func() time.Time) (*chainWriter, error) {
	line, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(append(line, '\n')); err != nil {
		return nil, fmt.Errorf("write recording header: %w", err)
	}
	return &chainWriter{w: w, start: h.Start, now: now, last: chainStart(line)}, nil
}

func (c *chainWriter) write(kind string, data []byte) error {
	t := c.now().Sub(c.start).Microseconds()
	if t < 0 {
		t = 0
	}
	c.last = chainNext(c.last, kind, t, data)
	line, err := json.Marshal(RecordingChunk{T: t, Kind: kind, Data: data, Hash: hex.EncodeToString(c.last[:])})
	if err != nil {
		return err
	}
	_, err = c.w.Write(append(line, '\n'))
	return err
}

// Recording is a recording read back and verified.
type Recording struct {
	Header RecordingHeader
	Chunks []RecordingChunk
	// Final is the hex hash of the last chunk (of the header when there is none): what the
	// audit log's end record names.
	Final string
	// End is the session's end; nil when the recording is unterminated (the recorder or the
	// agent stopped before the session ended).
	End *RecordingEnd
	// Dropped names the cap that stopped the recording, if one did.
	Dropped string
}

// ErrRecordingChain is wrapped by ReadRecording's error when a chunk's hash does not follow.
var ErrRecordingChain = errors.New("recording chain broken")

// ReadRecording reads a recording and verifies its chain. A chunk whose hash does not follow
// from the header and the chunks before it is an error wrapping ErrRecordingChain that names
// the chunk (1-based line number); a missing end is not an error (Recording.End is nil). Lines
// are at most 4 MiB.
func ReadRecording(r io.Reader) (*Recording, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read recording: %w", err)
		}
		return nil, errors.New("read recording: empty")
	}
	rec := &Recording{}
	headerLine := bytes.Clone(sc.Bytes())
	if err := json.Unmarshal(headerLine, &rec.Header); err != nil {
		return nil, fmt.Errorf("read recording: header: %w", err)
	}
	if rec.Header.Version != 1 {
		return nil, fmt.Errorf("read recording: version %d, want 1", rec.Header.Version)
	}
	last := chainStart(headerLine)
	line := 1
	for sc.Scan() {
		line++
		var c RecordingChunk
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return nil, fmt.Errorf("read recording: line %d: %w", line, err)
		}
		if rec.End != nil {
			return nil, fmt.Errorf("read recording: line %d: chunk after the end: %w", line, ErrRecordingChain)
		}
		last = chainNext(last, c.Kind, c.T, c.Data)
		if hex.EncodeToString(last[:]) != c.Hash {
			return nil, fmt.Errorf("read recording: line %d: hash does not follow from the lines before: %w", line, ErrRecordingChain)
		}
		switch c.Kind {
		case ChunkEnd:
			var e RecordingEnd
			if err := json.Unmarshal(c.Data, &e); err != nil {
				return nil, fmt.Errorf("read recording: line %d: end: %w", line, err)
			}
			rec.End = &e
		case ChunkDrop:
			var d RecordingDrop
			if err := json.Unmarshal(c.Data, &d); err != nil {
				return nil, fmt.Errorf("read recording: line %d: drop: %w", line, err)
			}
			rec.Dropped = d.Cap
		}
		rec.Chunks = append(rec.Chunks, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read recording: line %d: %w", line+1, err)
	}
	rec.Final = hex.EncodeToString(last[:])
	return rec, nil
}

// Output is the session's output (pty or stdout and stderr) in the order it arrived.
func (r *Recording) Output() []byte {
	var b []byte
	for _, c := range r.Chunks {
		if c.Kind == ChunkOutput || c.Kind == ChunkStderr {
			b = append(b, c.Data...)
		}
	}
	return b
}
