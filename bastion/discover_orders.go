package bastion

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sshca/sshca/client"
)

// DisableOrders are the keys the CA answered a scheduled report with, as the agent hands
// them to the disable unit (deploy/systemd/sshca-discover-disable.service): the agent keeps
// its read-only view of home directories and no way to take another uid, and the unit, which
// has both and nothing else, applies the file.
//
// The file carries fingerprints only, never paths: the unit finds the files by running
// discovery itself, so whoever can write the orders file (the agent's user) can at most have
// keys commented out of the authorized_keys files sshd reads, which only takes access away.
type DisableOrders struct {
	Host         string    `json:"host"`
	Fingerprints []string  `json:"fingerprints"` // "SHA256:<base64>", as ssh.FingerprintSHA256
	Received     time.Time `json:"received"`
}

// WriteDisableOrders replaces the orders file at path (mode 0600) with o, atomically, and
// only when its fingerprints differ from the file's: a path unit starts the disable unit on
// every change, so an unchanged order list does not run it again. It says whether it wrote.
func WriteDisableOrders(path string, o DisableOrders) (bool, error) {
	o.Fingerprints = slices.Clone(o.Fingerprints)
	slices.Sort(o.Fingerprints)
	old, err := ReadDisableOrders(path)
	switch {
	case err == nil && slices.Equal(old.Fingerprints, o.Fingerprints) && old.Host == o.Host:
		return false, nil
	case errors.Is(err, os.ErrNotExist) && len(o.Fingerprints) == 0:
		return false, nil // nothing ordered, nothing to hand over
	}
	b, err := json.Marshal(o)
	if err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, fmt.Errorf("bastion: disable orders: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".orders-*")
	if err != nil {
		return false, fmt.Errorf("bastion: disable orders: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return false, fmt.Errorf("bastion: disable orders: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("bastion: disable orders: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, fmt.Errorf("bastion: disable orders: %w", err)
	}
	return true, nil
}

// ReadDisableOrders reads and checks an orders file: every fingerprint must be
// "SHA256:" and 43 characters of unpadded base64 (an error names the bad one). A missing file
// is an error that wraps os.ErrNotExist.
func ReadDisableOrders(path string) (DisableOrders, error) {
	var o DisableOrders
	b, err := os.ReadFile(path)
	if err != nil {
		return o, fmt.Errorf("bastion: disable orders: %w", err)
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return o, fmt.Errorf("bastion: disable orders %s: not the JSON the agent writes: %w", path, err)
	}
	for i, fp := range o.Fingerprints {
		if !validFingerprint(fp) {
			return o, fmt.Errorf("bastion: disable orders %s: fingerprints[%d] %q: want SHA256: and 43 characters of base64, as ssh-keygen -l prints", path, i, fp)
		}
	}
	return o, nil
}

func validFingerprint(fp string) bool {
	b64, ok := strings.CutPrefix(fp, "SHA256:")
	if !ok || len(b64) != 43 {
		return false
	}
	for _, c := range b64 {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

// ApplyDisableOrders comments every key of fps out of each authorized_keys file of rep (a
// discovery just run) that holds it, with DisableKey (as the file's owner, backup and marker
// in stateDir). A key that rep no longer lists is already gone (disabled before, or removed
// by its owner) and is skipped: applying the same orders twice changes nothing. Errors of
// single files are joined; the keys disabled before them stay disabled.
func ApplyDisableOrders(rep client.DiscoveryReport, fps []string, stateDir string) ([]DisabledKey, error) {
	var done []DisabledKey
	var errs []error
	for _, fp := range fps {
		files := map[string]bool{}
		for _, k := range rep.Keys {
			if k.Fingerprint != fp || files[k.File] {
				continue
			}
			files[k.File] = true
			rec, err := DisableKey(k.File, fp, stateDir)
			if err != nil {
				errs = append(errs, fmt.Errorf("disable %s in %s: %w", fp, k.File, err))
				continue
			}
			done = append(done, rec)
		}
	}
	return done, errors.Join(errs...)
}
