package bastion

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

// RecordShipper ships the recordings RecordServer writes in Dir to the CA
// (POST /v1/recordings/{id}), each batch under a proof signed by the host key with its host
// certificate (ca.SignRecordProof), as the lines are chained: every Every it sends the complete
// lines written since the last batch the CA took. What the CA has is kept beside each
// recording as <id>.shipped ("<lines> <bytes>", and "done" once the end arrived), written after
// each answer, so that shipping resumes where it stopped after a restart; the CA answers every
// batch with how many lines it has, and a batch that does not start there is resent from it.
//
// A batch the CA refuses for its content (400, 403, 413: a file changed behind the agent's
// back, another host's session) is not sent again: <id>.shipped says "refused" and why, and
// the recording stays here. Failures of the way (unreachable, 401 with an expired certificate,
// 409, 429, 503 when the recordings store is full) are retried the next round.
type RecordShipper struct {
	Dir    string
	Client *client.Client
	// Key is the host key; Cert reads its current host certificate (each round: the
	// certificate is renewed beside the key).
	Key  ssh.Signer
	Cert func() (*ssh.Certificate, error)
	// Host is the host name to ship under, one of the certificate's (empty: its first).
	Host  string
	Every time.Duration // 2s when 0
	// Clock paces the rounds (nil: the real clock); tests pass a clockwork.FakeClock.
	Clock    clockwork.Clock
	MaxBatch int // bytes of lines per batch; 512 KiB when 0 (the CA takes 1 MiB)
	Now      func() time.Time
	Log      *slog.Logger

	shipped, failed atomic.Int64
	// roundDone, when set (tests), is called after each round of Run.
	roundDone func()

	mu     sync.Mutex
	status ShipperStatus // as of the end of the last round (ShipOnce)
}

// ShipperStatus is the shipper's state as the agent's /healthz and /metrics show it: the CA
// going away does not lose recordings (they stay in Dir and are sent when it is back), and
// this says how far behind it is.
type ShipperStatus struct {
	// Shipped is how many batches the CA took, Failed how many rounds of a recording failed
	// (counters since start); Refused how many recordings the CA refused and stay here only.
	Shipped, Failed int64
	Refused         int
	// LastShipped is when the CA last took a batch (zero: not since start); LastRound when the
	// last round ended.
	LastShipped, LastRound time.Time
	// Backlog is the bytes of recorded lines the CA does not have yet, in BacklogRecordings
	// recordings (refused ones apart), as of the end of the last round.
	Backlog           int64
	BacklogRecordings int
	// LastError is the first failure of the last round ("" when it shipped everything).
	LastError string
}

// Status returns the shipper's state as of the end of its last round.
func (s *RecordShipper) Status() ShipperStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Shipped, st.Failed = s.shipped.Load(), s.failed.Load()
	return st
}

func (s *RecordShipper) clock() clockwork.Clock {
	if s.Clock == nil {
		return clockwork.NewRealClock()
	}
	return s.Clock
}

// shipState is <id>.shipped.
type shipState struct {
	lines, bytes int64
	done         bool
	refused      string
}

func readShipState(path string) shipState {
	b, err := os.ReadFile(path)
	if err != nil {
		return shipState{}
	}
	var s shipState
	f := strings.Fields(string(b))
	if len(f) >= 2 {
		s.lines, _ = strconv.ParseInt(f[0], 10, 64)
		s.bytes, _ = strconv.ParseInt(f[1], 10, 64)
	}
	if len(f) >= 3 {
		switch f[2] {
		case "done":
			s.done = true
		case "refused":
			s.refused = strings.Join(f[3:], " ")
		}
	}
	return s
}

func (s shipState) write(path string) error {
	line := fmt.Sprintf("%d %d", s.lines, s.bytes)
	switch {
	case s.done:
		line += " done"
	case s.refused != "":
		line += " refused " + strings.ReplaceAll(s.refused, "\n", " ")
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(line+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Shipped is how many batches the CA took; Failed how many rounds of a recording failed.
func (s *RecordShipper) Shipped() int64 { return s.shipped.Load() }
func (s *RecordShipper) Failed() int64  { return s.failed.Load() }

// Run ships until ctx ends.
func (s *RecordShipper) Run(ctx context.Context) {
	if s.Every <= 0 {
		s.Every = 2 * time.Second
	}
	t := s.clock().NewTicker(s.Every)
	defer t.Stop()
	for {
		s.ShipOnce(ctx)
		if s.roundDone != nil {
			s.roundDone()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
	}
}

// ShipOnce ships what every recording of Dir has that the CA lacks, and returns the first
// error (the other recordings are shipped anyway); Status says what is left.
func (s *RecordShipper) ShipOnce(ctx context.Context) (err error) {
	defer func() { s.endRound(err) }()
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.Now == nil {
		s.Now = time.Now
	}
	paths, err := filepath.Glob(filepath.Join(s.Dir, "*.rec"))
	if err != nil {
		return err
	}
	var first error
	for _, p := range paths {
		if err := s.shipRecording(ctx, p); err != nil {
			s.failed.Add(1)
			s.Log.Warn("shipping a recording failed; retrying", "recording", filepath.Base(p), "err", err)
			if first == nil {
				first = err
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return first
}

func (s *RecordShipper) shipRecording(ctx context.Context, path string) error {
	id := strings.TrimSuffix(filepath.Base(path), ".rec")
	statePath := filepath.Join(filepath.Dir(path), id+".shipped")
	st := readShipState(statePath)
	if st.done || st.refused != "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	maxBatch := s.MaxBatch
	if maxBatch <= 0 {
		maxBatch = 512 << 10
	}
	for {
		if _, err := f.Seek(st.bytes, io.SeekStart); err != nil {
			return err
		}
		batch, n, ended, err := readBatch(f, maxBatch)
		if err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		if n == 0 {
			return nil
		}
		got, err := s.send(ctx, id, st.lines, batch)
		var ce *client.Error
		if errors.As(err, &ce) && (ce.Status == http.StatusBadRequest || ce.Status == http.StatusForbidden || ce.Status == http.StatusRequestEntityTooLarge) {
			st.refused = ce.Error()
			s.Log.Error("the CA refused a recording; it stays on this host only", "recording", id, "err", err)
			return st.write(statePath)
		}
		if err != nil {
			return err
		}
		s.shipped.Add(1)
		s.mu.Lock()
		s.status.LastShipped = s.clock().Now()
		s.mu.Unlock()
		switch {
		case got.Received == st.lines+int64(n):
			st.lines += int64(n)
			st.bytes += int64(len(batch))
			st.done = ended
		default:
			// The CA has more or fewer lines than this host thought (a lost answer, a state
			// file from before a crash): start again from where the CA's end.
			if st.lines, st.bytes, err = lineOffset(f, got.Received); err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
		}
		if err := st.write(statePath); err != nil {
			return err
		}
		if st.done {
			return nil
		}
	}
}

func (s *RecordShipper) send(ctx context.Context, id string, offset int64, batch []byte) (ca.RecordingAccepted, error) {
	cert, err := s.Cert()
	if err != nil {
		return ca.RecordingAccepted{}, fmt.Errorf("host certificate: %w", err)
	}
	host := s.Host
	if host == "" {
		if len(cert.ValidPrincipals) == 0 {
			return ca.RecordingAccepted{}, errors.New("the host certificate names no host")
		}
		host = cert.ValidPrincipals[0]
	}
	var jti [12]byte
	_, _ = rand.Read(jti[:])
	proof, err := ca.SignRecordProof(s.Key, cert, host, id, offset, batch, s.Now(), hex.EncodeToString(jti[:]))
	if err != nil {
		return ca.RecordingAccepted{}, err
	}
	return s.Client.ShipRecording(ctx, proof, id, offset, batch)
}

// readBatch reads complete lines (a line the recorder is still writing has no newline yet)
// from r up to about max bytes: at least one line, however long. ended says the batch holds
// the end chunk.
func readBatch(r io.Reader, max int) ([]byte, int, bool, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var batch []byte
	n, ended := 0, false
	for len(batch) < max {
		line, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			break // an incomplete line, or none: the next round
		}
		if err != nil {
			return nil, 0, false, err
		}
		batch = append(batch, line...)
		n++
		if strings.Contains(string(line), `"k":"end"`) {
			ended = true
			break
		}
	}
	return batch, n, ended, nil
}

// lineOffset is the byte offset of line n (0-based) of f: where a batch starting there begins.
func lineOffset(f *os.File, n int64) (int64, int64, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, 0, err
	}
	br := bufio.NewReaderSize(f, 64<<10)
	var off, i int64
	for ; i < n; i++ {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return 0, 0, fmt.Errorf("the CA has %d lines, this file fewer complete ones", n)
		}
		off += int64(len(line))
	}
	return i, off, nil
}

// endRound records the round's outcome and what the CA still lacks: for each recording that is
// neither done nor refused, the bytes past what its state file says the CA has (complete lines
// or not: a line being written is backlog too).
func (s *RecordShipper) endRound(err error) {
	var backlog int64
	waiting, refused := 0, 0
	paths, _ := filepath.Glob(filepath.Join(s.Dir, "*.rec"))
	for _, p := range paths {
		st := readShipState(strings.TrimSuffix(p, ".rec") + ".shipped")
		if st.refused != "" {
			refused++
			continue
		}
		if st.done {
			continue
		}
		if fi, serr := os.Stat(p); serr == nil && fi.Size() > st.bytes {
			backlog += fi.Size() - st.bytes
			waiting++
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.LastRound = s.clock().Now()
	s.status.Backlog, s.status.BacklogRecordings, s.status.Refused = backlog, waiting, refused
	s.status.LastError = ""
	if err != nil {
		s.status.LastError = err.Error()
	}
}
