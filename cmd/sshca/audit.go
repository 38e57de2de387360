package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
)

// AuditConfig configures the audit log (a hash chain in Redis, package audit).
type AuditConfig struct {
	// KeyFile holds the HMAC key of the chain (hex, as `sshca audit genkey` writes it). Without
	// it the chain is plain SHA-256: it shows accidents, not someone who can write to Redis.
	KeyFile string `yaml:"key_file"`
}

// readAuditKey reads a key file that only its owner may read.
func readAuditKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %04o); chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) < 16 {
		return nil, fmt.Errorf("%s must hold a hex key of at least 16 bytes, as `sshca audit genkey` writes", path)
	}
	return key, nil
}

// writeAuditKey creates a new key file (mode 0600); it never overwrites one.
func writeAuditKey(path string) error {
	key := make([]byte, audit.KeySize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, hex.EncodeToString(key)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// auditKeyOrCreate reads the key at path, creating it first if there is none (sshca dev).
func auditKeyOrCreate(path string) ([]byte, error) {
	if err := writeAuditKey(path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	return readAuditKey(path)
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func newAuditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "The tamper-evident audit log: make its key, verify its chain, archive it"}
	var keyOut string
	genkey := &cobra.Command{
		Use:   "genkey --out FILE",
		Short: "Write a new audit key (hex, mode 0600) for audit.key_file; never overwrites",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyOut == "" {
				return errors.New("--out FILE is required")
			}
			if err := writeAuditKey(keyOut); err != nil {
				return fmt.Errorf("audit genkey: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s; set audit.key_file to it on every CA replica\n", keyOut)
			return nil
		},
	}
	genkey.Flags().StringVar(&keyOut, "out", "", "the key file to create")

	var redisURL, keyFile, archiveFile string
	var print bool
	open := func() (*audit.Log, func(), []byte, error) {
		var key []byte
		if keyFile != "" {
			var err error
			if key, err = readAuditKey(keyFile); err != nil {
				return nil, nil, nil, fmt.Errorf("--key-file: %w", err)
			}
		}
		if redisURL == "" {
			return audit.New(nil, audit.Options{Key: key}), func() {}, key, nil
		}
		ropts, err := redis.ParseURL(redisURL)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--redis: %w", err)
		}
		rdb := redis.NewClient(ropts)
		return audit.New(rdb, audit.Options{Key: key}), func() { rdb.Close() }, key, nil
	}
	keyed := func(key []byte) string {
		if key == nil {
			return "unkeyed (SHA-256; give --key-file to check the MACs)"
		}
		return "keyed (HMAC-SHA256)"
	}
	verify := &cobra.Command{
		Use:   "verify (--redis URL | --archive FILE) [--key-file FILE] [--print]",
		Short: "Check the audit chain in Redis, or an archive; exit 1 at the first record that breaks it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (redisURL == "") == (archiveFile == "") {
				return errors.New("give --redis URL (the chain in Redis) or --archive FILE (an archive), one of them")
			}
			al, done, key, err := open()
			if err != nil {
				return err
			}
			defer done()
			enc := json.NewEncoder(cmd.OutOrStdout())
			var each func(audit.Entry)
			if print {
				each = func(e audit.Entry) {
					_ = enc.Encode(struct {
						Seq    uint64         `json:"seq"`
						MAC    string         `json:"mac"`
						Record ca.AuditRecord `json:"record"`
					}{e.Seq, e.MAC, e.Record})
				}
			}
			if archiveFile != "" {
				f, err := os.Open(archiveFile)
				if err != nil {
					return err
				}
				defer f.Close()
				rep, err := al.VerifyArchive(f, each)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "OK: %s, chain intact, %s, records %d to %d, last %.16s\n",
					plural(rep.Records, "audit record"), keyed(key), rep.FirstSeq, rep.LastSeq, rep.LastMAC)
				return nil
			}
			rep, err := al.Verify(cmd.Context(), each)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "OK: %s, chain intact, %s, head %.16s\n", plural(rep.Records, "audit record"), keyed(key), rep.Head)
			return nil
		},
	}
	var archiveOut string
	archive := &cobra.Command{
		Use:   "archive --redis URL --key-file FILE --out FILE",
		Short: "Verify the chain, append its records to a file (synced), then trim them from Redis",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if redisURL == "" || archiveOut == "" {
				return errors.New("--redis URL and --out FILE are required")
			}
			al, done, key, err := open()
			if err != nil {
				return err
			}
			defer done()
			f, err := os.OpenFile(archiveOut, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return err
			}
			rep, err := al.Archive(cmd.Context(), f)
			if cerr := f.Close(); err == nil && cerr != nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "archived %s to %s (%s) and trimmed them from Redis\n", plural(rep.Records, "audit record"), archiveOut, keyed(key))
			return nil
		},
	}
	archive.Flags().StringVar(&archiveOut, "out", "", "the archive file (appended to, mode 0600)")
	for _, c := range []*cobra.Command{verify, archive} {
		c.Flags().StringVar(&redisURL, "redis", os.Getenv("SSHCA_REDIS_URL"), "redis://user:password@host:port/db (env SSHCA_REDIS_URL)")
		c.Flags().StringVar(&keyFile, "key-file", "", "the audit key (audit.key_file of the CA)")
	}
	verify.Flags().StringVar(&archiveFile, "archive", "", "verify an archive file instead of the chain in Redis")
	verify.Flags().BoolVar(&print, "print", false, "print each record (JSON lines) as it is checked")
	cmd.AddCommand(genkey, verify, archive)
	return cmd
}
