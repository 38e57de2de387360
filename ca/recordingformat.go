package ca

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

// A session recording is JSON lines: one RecordingHeader, then one RecordingChunk per line.
// The bastion agent writes it as the chunks arrive, so a recording whose session was cut short
// is a prefix with no "end" chunk: ReadRecording reports it as unterminated, never as invalid.
// The agent ships the same lines to the CA (AcceptRecording), which checks the chain as they
// arrive and keeps them; both ends read them with ReadRecording.
//
// The chain: h0 = SHA-256(recordingContext || header line without its newline); each chunk's
// hash is SHA-256(previous hash || len(kind) as one byte || kind || T as uint64 big-endian ||
// len(data) as uint64 big-endian || data). It runs over the raw bytes the session produced,
// before any rendering (an asciicast export replaces invalid UTF-8; the chain never sees that).
const recordingContext = "sshca-recording-v1\x00"

// Chunk kinds.
const (
	ChunkOutput = "o"    // the session's output (a pty's, or stdout)
	ChunkStderr = "e"    // stderr of a session without a pty
	ChunkInput  = "i"    // input, only when input recording is on
	ChunkResize = "r"    // window size, data "COLSxROWS"
	ChunkDrop   = "drop" // a cap of the agent was reached: data is the JSON RecordingDrop; nothing more is kept
	ChunkEnd    = "end"  // the session ended: data is the JSON RecordingEnd
	// ChunkCut is not a chunk of the chain but a line the CA keeps in place of the chunks it
	// did not keep past its own caps (RecordingCut): they were checked as they arrived, and
	// the line carries the chain's hash after the last of them.
	ChunkCut = "cut"
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
	// Cut is set on a ChunkCut line only.
	Cut *RecordingCut `json:"cut,omitempty"`
}

// RecordingCut says what a ChunkCut line stands for: Chunks lines of the agent, Bytes bytes of
// them, not kept because of the CA's Cap ("session" or "host"). Their chain was checked when
// they arrived; the line's Hash is the chain's hash after the last of them.
type RecordingCut struct {
	Cap    string `json:"cap"`
	Chunks int64  `json:"chunks"`
	Bytes  int64  `json:"bytes"`
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

// RecordingChainStart is the chain's first hash, of the header line without its newline.
func RecordingChainStart(headerLine []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(recordingContext))
	h.Write(headerLine)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// RecordingChainNext is the hash of a chunk that follows prev.
func RecordingChainNext(prev [32]byte, kind string, t int64, data []byte) [32]byte {
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
	// Dropped names the agent's cap that stopped the recording, if one did.
	Dropped string
	// Cut totals the ChunkCut lines: chunks the CA did not keep past its caps, whose chain
	// only the CA checked (on arrival). Zero for a recording read on the bastion.
	Cut RecordingCut
}

// ErrRecordingChain is wrapped by ReadRecording's error when a chunk's hash does not follow.
var ErrRecordingChain = errors.New("recording chain broken")

// maxRecordingLine bounds a line: a 64 KiB chunk is about 88 KiB of base64 in JSON.
const maxRecordingLine = 4 << 20

// RecordingChain checks a recording line by line as it arrives (the CA checks what an agent
// ships with it; ReadRecording reads a whole one).
type RecordingChain struct {
	last  [32]byte
	ended bool
}

// StartRecordingChain reads the header line (without its newline) and starts the chain.
func StartRecordingChain(headerLine []byte) (*RecordingChain, RecordingHeader, error) {
	var h RecordingHeader
	if err := json.Unmarshal(headerLine, &h); err != nil {
		return nil, h, fmt.Errorf("header: %w", err)
	}
	if h.Version != 1 {
		return nil, h, fmt.Errorf("header: version %d, want 1", h.Version)
	}
	return &RecordingChain{last: RecordingChainStart(headerLine)}, h, nil
}

// ResumeRecordingChain continues a chain whose last hash (hex) is last, ended when its end
// chunk was seen.
func ResumeRecordingChain(last string, ended bool) (*RecordingChain, error) {
	b, err := hex.DecodeString(last)
	if err != nil || len(b) != 32 {
		return nil, errors.New("recording chain: last hash is not 64 hex digits")
	}
	c := &RecordingChain{ended: ended}
	copy(c.last[:], b)
	return c, nil
}

// Last is the hex hash of the chain so far.
func (c *RecordingChain) Last() string { return hex.EncodeToString(c.last[:]) }

// Ended says the end chunk was seen.
func (c *RecordingChain) Ended() bool { return c.ended }

// Next reads one chunk line (without its newline) and checks that its hash follows. A
// ChunkCut line is taken on trust (allowCut; its hash becomes the chain's); an error wraps
// ErrRecordingChain when the hash does not follow or a line comes after the end.
func (c *RecordingChain) Next(line []byte, allowCut bool) (RecordingChunk, error) {
	var ch RecordingChunk
	if err := json.Unmarshal(line, &ch); err != nil {
		return ch, err
	}
	if c.ended {
		return ch, fmt.Errorf("chunk after the end: %w", ErrRecordingChain)
	}
	if ch.Kind == ChunkCut {
		if !allowCut || ch.Cut == nil {
			return ch, fmt.Errorf("a cut line where none may be: %w", ErrRecordingChain)
		}
		prev, err := ResumeRecordingChain(ch.Hash, false)
		if err != nil {
			return ch, fmt.Errorf("cut line: %w", ErrRecordingChain)
		}
		c.last = prev.last
		return ch, nil
	}
	if ch.Cut != nil {
		return ch, fmt.Errorf("a %q chunk with a cut: %w", ch.Kind, ErrRecordingChain)
	}
	next := RecordingChainNext(c.last, ch.Kind, ch.T, ch.Data)
	if hex.EncodeToString(next[:]) != ch.Hash {
		return ch, fmt.Errorf("hash does not follow from the lines before: %w", ErrRecordingChain)
	}
	c.last = next
	if ch.Kind == ChunkEnd {
		c.ended = true
	}
	return ch, nil
}

// ReadRecording reads a recording and verifies its chain. A chunk whose hash does not follow
// from the header and the chunks before it is an error wrapping ErrRecordingChain that names
// the chunk (1-based line number); a missing end is not an error (Recording.End is nil). Lines
// are at most 4 MiB. ChunkCut lines (a recording read from the CA) are counted in Cut.
func ReadRecording(r io.Reader) (*Recording, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), maxRecordingLine)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read recording: %w", err)
		}
		return nil, errors.New("read recording: empty")
	}
	rec := &Recording{}
	chain, h, err := StartRecordingChain(bytes.Clone(sc.Bytes()))
	if err != nil {
		return nil, fmt.Errorf("read recording: %w", err)
	}
	rec.Header = h
	line := 1
	for sc.Scan() {
		line++
		c, err := chain.Next(sc.Bytes(), true)
		if err != nil {
			return nil, fmt.Errorf("read recording: line %d: %w", line, err)
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
		case ChunkCut:
			rec.Cut.Cap = c.Cut.Cap
			rec.Cut.Chunks += c.Cut.Chunks
			rec.Cut.Bytes += c.Cut.Bytes
			continue
		}
		rec.Chunks = append(rec.Chunks, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read recording: line %d: %w", line+1, err)
	}
	rec.Final = chain.Last()
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
