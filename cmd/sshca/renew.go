package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// renewLoop keeps a host certificate renewed until ctx ends: at 2/3 of its lifetime (with
// jitter, so a fleet does not renew at once), on a proof of possession signed by the host key,
// retrying with backoff (1 s doubling to 1 min) until the certificate expires. Every reading
// of time and every wait goes through clk (nil: the real clock), so tests run the loop on a
// fake clock instead of waiting two thirds of a certificate's life.
func renewLoop(ctx context.Context, out io.Writer, server, keyPath, certPath, reloadCmd string, clk clockwork.Clock) error {
	if clk == nil {
		clk = clockwork.NewRealClock()
	}
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	hostKey, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return fmt.Errorf("host key %s: %w", keyPath, err)
	}
	for {
		cert, err := readCert(certPath)
		if err != nil {
			return err
		}
		// 2/3 of what is left (ValidAfter lies in the past by the clock-skew allowance).
		before := time.Unix(int64(cert.ValidBefore), 0)
		left := before.Sub(clk.Now())
		at := clk.Now().Add(left * 2 / 3).Add(jitter(left / 10))
		fmt.Fprintf(out, "next renewal at %s\n", at.Local().Format("2006-01-02 15:04:05 MST"))
		select {
		case <-ctx.Done():
			return nil
		case <-clk.After(at.Sub(clk.Now())):
		}
		backoff := time.Second
		for {
			err := renewOnce(ctx, server, hostKey, cert, certPath, clk.Now())
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			if clk.Now().Add(backoff).After(before) {
				return fmt.Errorf("the certificate expired before it could be renewed (%v); get a new one with a workload token", err)
			}
			fmt.Fprintf(out, "renewal failed (%v); retrying in %s\n", err, backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-clk.After(backoff):
			}
			backoff = min(backoff*2, time.Minute)
		}
		fmt.Fprintf(out, "renewed %s\n", certPath)
		if reloadCmd != "" {
			if b, err := exec.CommandContext(ctx, "sh", "-c", reloadCmd).CombinedOutput(); err != nil {
				fmt.Fprintf(out, "reload command failed: %v: %s\n", err, strings.TrimSpace(string(b)))
			}
		}
	}
}

func renewOnce(ctx context.Context, server string, hostKey ssh.Signer, cert *ssh.Certificate, certPath string, now time.Time) error {
	var id [12]byte
	_, _ = rand.Read(id[:])
	token, err := ca.SignRenewToken(hostKey, cert, now, hex.EncodeToString(id[:]))
	if err != nil {
		return err
	}
	reply, err := apiClient(ctx, server).RenewHost(ctx, token)
	if err != nil {
		return cliError(err)
	}
	return os.WriteFile(certPath, []byte(reply.Certificate+"\n"), 0o644)
}

func readCert(path string) (*ssh.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", path, err)
	}
	c, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, errors.New("not a certificate: " + path)
	}
	return c, nil
}

func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(2*max)))
	return time.Duration(n.Int64()) - max
}
