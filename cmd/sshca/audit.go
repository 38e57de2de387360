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

func newAuditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "The tamper-evident audit log: make its key, verify its chain"}
	var out string
	genkey := &cobra.Command{
		Use:   "genkey --out FILE",
		Short: "Write a new audit key (hex, mode 0600) for audit.key_file; never overwrites",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out FILE is required")
			}
			if err := writeAuditKey(out); err != nil {
				return fmt.Errorf("audit genkey: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s; set audit.key_file to it on every CA replica\n", out)
			return nil
		},
	}
	genkey.Flags().StringVar(&out, "out", "", "the key file to create")

	var redisURL, keyFile string
	var print bool
	verify := &cobra.Command{
		Use:   "verify --redis URL [--key-file FILE] [--print]",
		Short: "Check the whole audit chain; exit 1 at the first record that breaks it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ropts, err := redis.ParseURL(redisURL)
			if err != nil {
				return fmt.Errorf("--redis: %w", err)
			}
			rdb := redis.NewClient(ropts)
			defer rdb.Close()
			var key []byte
			if keyFile != "" {
				if key, err = readAuditKey(keyFile); err != nil {
					return fmt.Errorf("--key-file: %w", err)
				}
			}
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
			rep, err := audit.New(rdb, audit.Options{Key: key}).Verify(cmd.Context(), each)
			if err != nil {
				return err
			}
			keyed := "keyed (HMAC-SHA256)"
			if key == nil {
				keyed = "unkeyed (SHA-256; give --key-file to check the MACs)"
			}
			noun := "records"
			if rep.Records == 1 {
				noun = "record"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "OK: %d audit %s, chain intact, %s, head %.16s\n", rep.Records, noun, keyed, rep.Head)
			return nil
		},
	}
	verify.Flags().StringVar(&redisURL, "redis", os.Getenv("SSHCA_REDIS_URL"), "redis://user:password@host:port/db (env SSHCA_REDIS_URL)")
	verify.Flags().StringVar(&keyFile, "key-file", "", "the audit key (audit.key_file of the CA)")
	verify.Flags().BoolVar(&print, "print", false, "print each record (JSON lines) as it is checked")
	cmd.AddCommand(genkey, verify)
	return cmd
}
