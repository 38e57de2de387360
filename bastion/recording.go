package bastion

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/sshca/sshca/ca"
)

// The recording format and its hash chain are the domain's (ca/recordingformat.go): the agent
// writes it, the CA checks and keeps what the agent ships, and both read it back with the same
// code. These names are the bastion's view of it.
type (
	RecordingHeader = ca.RecordingHeader
	RecordPeer      = ca.RecordPeer
	RecordingChunk  = ca.RecordingChunk
	RecordingDrop   = ca.RecordingDrop
	RecordingEnd    = ca.RecordingEnd
	Recording       = ca.Recording
)

// Chunk kinds (ca.Chunk*).
const (
	ChunkOutput = ca.ChunkOutput
	ChunkStderr = ca.ChunkStderr
	ChunkInput  = ca.ChunkInput
	ChunkResize = ca.ChunkResize
	ChunkDrop   = ca.ChunkDrop
	ChunkEnd    = ca.ChunkEnd
)

// ErrRecordingChain is wrapped by ReadRecording's error when a chunk's hash does not follow.
var ErrRecordingChain = ca.ErrRecordingChain

// ReadRecording reads a recording and verifies its chain (ca.ReadRecording).
func ReadRecording(r io.Reader) (*Recording, error) { return ca.ReadRecording(r) }

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
	return &chainWriter{w: w, start: h.Start, now: now, last: ca.RecordingChainStart(line)}, nil
}

func (c *chainWriter) write(kind string, data []byte) error {
	t := c.now().Sub(c.start).Microseconds()
	if t < 0 {
		t = 0
	}
	c.last = ca.RecordingChainNext(c.last, kind, t, data)
	line, err := json.Marshal(RecordingChunk{T: t, Kind: kind, Data: data, Hash: hex.EncodeToString(c.last[:])})
	if err != nil {
		return err
	}
	_, err = c.w.Write(append(line, '\n'))
	return err
}
