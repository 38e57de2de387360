package bastion

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/crypto/ssh"
)

// BenchmarkRecordedEcho measures keystroke-to-echo through the recorder: a byte written to the
// user's terminal goes through sshca-record to the session's pty, whose echo comes back through
// the recorder (and is streamed to a RecordServer) to the user's terminal. BenchmarkDirectEcho
// is the same without the recorder; the difference is what recording adds. Both report the
// median and p99 in µs.
func BenchmarkRecordedEcho(b *testing.B) { benchEcho(b, true) }

func BenchmarkDirectEcho(b *testing.B) { benchEcho(b, false) }

func benchEcho(b *testing.B, recorded bool) {
	cmd := exec.Command("cat")
	if recorded {
		dir := b.TempDir()
		sock := filepath.Join(dir, "s")
		l, err := ListenRecordSocket(sock, "")
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = (&RecordServer{Dir: filepath.Join(dir, "recs")}).Serve(ctx, l) }()
		defer func() { cancel(); <-done }()
		ca := writeKey(b, filepath.Join(dir, "ca"))
		user := writeKey(b, filepath.Join(dir, "user"))
		c := &ssh.Certificate{Key: user.PublicKey(), Serial: 1, CertType: ssh.UserCert, KeyId: "bench#1",
			ValidPrincipals: []string{"bench"}, ValidBefore: ssh.CertTimeInfinity}
		if err := c.SignCert(rand.Reader, ca); err != nil {
			b.Fatal(err)
		}
		auth := filepath.Join(dir, "auth")
		if err := os.WriteFile(auth, []byte("publickey "+string(ssh.MarshalAuthorizedKey(c))), 0o600); err != nil {
			b.Fatal(err)
		}
		cmd = exec.Command(buildRecorder(b), "--socket", sock)
		cmd.Env = append(os.Environ(), "SSH_USER_AUTH="+auth, "SSH_ORIGINAL_COMMAND=cat", "SHELL=/bin/sh")
	}
	ptmx, err := pty.Start(cmd)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { ptmx.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	buf := make([]byte, 64)
	echo := func() time.Duration {
		start := time.Now()
		if _, err := ptmx.Write([]byte("a")); err != nil {
			b.Fatal(err)
		}
		if _, err := ptmx.Read(buf); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	// The recorder sets the user's terminal raw once it runs: wait until a keystroke comes back
	// as exactly one byte (an echo from the session, not from a cooked line discipline).
	for i := 0; i < 200; i++ {
		echo()
		time.Sleep(5 * time.Millisecond)
		if recorded {
			continue
		}
		break
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lat = append(lat, echo())
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
