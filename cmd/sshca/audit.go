package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/store"
)

// AuditConfig configures the audit log (a hash chain in Redis, package audit).
type AuditConfig struct {
	// KeyFile holds the HMAC key of the chain (hex, as `sshca audit genkey` writes it). Without
	// it the chain is plain SHA-256: it shows accidents, not someone who can write to Redis.
	KeyFile string `yaml:"key_file"`
	// ArchiveFile is the newest audit archive (`sshca audit archive --out`), optional. Each
	// archive run records the store's generation marks in it; at start the CA compares the
	// store with that record, so a store restored from a copy older than the archive is found
	// to have lost state even when no running replica or bastion saw the newer state.
	ArchiveFile string `yaml:"archive_file"`
	// Stripes is the number of chains (stripes) the audit log is kept in: 0 or 1 (the
	// default) is one chain. Set it to at least the number of CA replicas: each replica then
	// appends to a stripe of its own instead of all of them racing for one head, which caps the
	// whole fleet at what one chain takes (docs/scaling.md), and on a Redis Cluster the stripes
	// (hash tags {audit}, {audit:1}, {audit:2}, ...) spread over the masters. Every second a
	// replica that appended records a checkpoint of every stripe's head, which `sshca audit
	// verify` checks. Lowering it later loses nothing: readers walk every stripe ever used.
	// At most 1024.
	Stripes int `yaml:"stripes"`
}

// archiveTarget is the target of the record that `sshca audit archive` appends before
// archiving: the store's generation marks at that moment (ca.AuditRecord.Store).
const archiveTarget = "audit archive"

// archiveWitness verifies the archive at path with al's key and returns what it found and
// the store witness of its newest archive record (nil when it holds none: written before
// archives held one). each, when not nil, sees every record.
func archiveWitness(al *audit.Log, path string, each func(audit.Entry)) (audit.ArchiveReport, *ca.StoreWitness, error) {
	f, err := os.Open(path)
	if err != nil {
		return audit.ArchiveReport{}, nil, err
	}
	defer f.Close()
	var w newestWitness
	ar, err := al.VerifyArchive(f, func(e audit.Entry) {
		w.see(e)
		if each != nil {
			each(e)
		}
	})
	return ar, w.store, err
}

// newestWitness keeps the store witness of the newest archive record seen: by time, since
// the stripes of a chain are read one after the other (`sshca audit archive` appends its
// record with one stripe, to stripe 0, but a chain may hold older ones anywhere); of records
// of the same time, the later read.
type newestWitness struct {
	store *ca.StoreWitness
	at    time.Time
}

func (w *newestWitness) see(e audit.Entry) {
	if e.Record.Store != nil && e.Record.Target == archiveTarget && !e.Record.Time.Before(w.at) {
		w.store, w.at = e.Record.Store, e.Record.Time
	}
}

// unsealed is the warning for an archive of a striped log that does not end with a seal
// (audit/seal.go): nothing in it then vouches that no stripe's lines were cut out of its last
// run. "" when there is nothing to say.
func unsealed(ar audit.ArchiveReport) string {
	if len(ar.Stripes) < 2 || ar.Sealed {
		return ""
	}
	return "WARNING: the archive of a striped log does not end with a seal: it was written before seals, or its last run was cut short; lines of a stripe cut out of it would not show (`sshca audit archive` to the same file seals it)"
}

// archiveSpan says which records an archive holds: "records F to L" of a log without
// stripes, the same per stripe of one with stripes.
func archiveSpan(ar audit.ArchiveReport) string {
	if len(ar.Stripes) <= 1 {
		return fmt.Sprintf("records %d to %d", ar.FirstSeq, ar.LastSeq)
	}
	var parts []string
	for i, s := range ar.Stripes {
		if s.Entries > 0 || s.Bases > 0 {
			parts = append(parts, fmt.Sprintf("stripe %d: records %d to %d", i, s.FirstSeq, s.LastSeq))
		}
	}
	return strings.Join(parts, ", ")
}

// chainSpan says what a verification of the chain in Redis walked, after the count: one
// stripe's head, or each stripe's records and head.
func chainSpan(rep audit.Report) string {
	if len(rep.Stripes) <= 1 {
		return fmt.Sprintf("head %.16s", rep.Head)
	}
	var parts []string
	for _, s := range rep.Stripes {
		parts = append(parts, fmt.Sprintf("stripe %d: %d records from record %d, head %d (%.16s)", s.Stripe, s.Records, s.BaseSeq+1, s.HeadSeq, s.Head))
	}
	return fmt.Sprintf("%d stripes, %d checkpoints (%s)", len(rep.Stripes), rep.Checkpoints, strings.Join(parts, "; "))
}

// checkAgainstArchive compares the store with an archive's witness (nil: nothing to compare):
// an error when the store lost state or was rolled back since the archive was written.
func checkAgainstArchive(ctx context.Context, st *store.Redis, w *ca.StoreWitness) error {
	if w == nil {
		return nil
	}
	if err := st.Witness().Seed(*w); err != nil {
		return err
	}
	if err := st.CheckState(ctx); err != nil {
		return fmt.Errorf("the store is older than the audit archive's record of it (generation %d, %s): it was restored from an older copy or lost state; run sshca store rebuild: %w",
			w.Epoch, plural(len(w.Marks), "mark"), err)
	}
	return nil
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

	var target redisTarget
	var keyFile, archiveFile string
	var print, acceptLegacy bool
	var opened redis.UniversalClient // the client open made, nil without --redis
	open := func(cmd *cobra.Command) (*audit.Log, func(), []byte, error) {
		var key []byte
		if keyFile != "" {
			var err error
			if key, err = readAuditKey(keyFile); err != nil {
				return nil, nil, nil, fmt.Errorf("--key-file: %w", err)
			}
		}
		o := audit.Options{Key: key, AcceptLegacyBase: acceptLegacy}
		if !target.given() {
			return audit.New(nil, o), func() {}, key, nil
		}
		// A command-line tool reads whole logs: 10 s a call unless the URL asks for less.
		rdb, err := target.open(cmd.Context(), cmd.Flags(), 10*time.Second, nil, nil)
		if err != nil {
			return nil, nil, nil, err
		}
		opened = rdb
		return audit.New(rdb, o), func() { rdb.Close() }, key, nil
	}
	keyed := func(key []byte) string {
		if key == nil {
			return "unkeyed (SHA-256; give --key-file to check the MACs)"
		}
		return "keyed (HMAC-SHA256)"
	}
	// warn says what a verification could not show.
	warn := func(w io.Writer, key []byte, rep audit.Report) {
		if key == nil {
			fmt.Fprintln(w, "WARNING: without the audit key the chain and its base mark are plain SHA-256, which anyone who can write to Redis can recompute: this shows accidents, not tampering")
		}
		if rep.LegacyBase {
			fmt.Fprintf(w, "WARNING: the base mark (record %d) is of the old unsigned form, accepted because of --accept-legacy-base: nothing shows that no records before it were removed; `sshca audit archive` replaces it with a signed one\n", rep.BaseSeq)
		}
	}
	// legacyHint completes ErrLegacyBase with what the operator can do.
	legacyHint := func(err error) error {
		if errors.Is(err, audit.ErrLegacyBase) {
			return fmt.Errorf("%w; give the archive that ends at that record (--archive FILE), or, having checked the base against it by other means, --accept-legacy-base once", err)
		}
		return err
	}
	verify := &cobra.Command{
		Use:   "verify (--redis URL [--cluster | --sentinel-master NAME] | --config FILE | --archive FILE | both) [--key-file FILE] [--print] [--accept-legacy-base]",
		Short: "Check the audit chain in Redis, an archive, or both in one (the chain in Redis must go on from the archive); exit 1 at the first record that breaks it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !target.given() && archiveFile == "" {
				return errors.New("give --redis URL or --config FILE (the chain in Redis), --archive FILE (an archive), or both (the chain in Redis after the latest archive)")
			}
			al, done, key, err := open(cmd)
			if err != nil {
				return err
			}
			defer done()
			enc := json.NewEncoder(cmd.OutOrStdout())
			var each func(audit.Entry)
			if print {
				each = func(e audit.Entry) {
					_ = enc.Encode(struct {
						Stripe int             `json:"stripe,omitempty"`
						Seq    uint64          `json:"seq"`
						MAC    string          `json:"mac"`
						V      int             `json:"v"`
						Record json.RawMessage `json:"record"`
					}{e.Stripe, e.Seq, e.MAC, e.Version, e.Raw})
				}
			}
			var ar audit.ArchiveReport
			var witness *ca.StoreWitness
			if archiveFile != "" {
				if ar, witness, err = archiveWitness(al, archiveFile, each); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "OK: %s, chain intact, %s, %s, last %.16s\n",
					plural(ar.Records, "audit record"), keyed(key), archiveSpan(ar), ar.LastMAC)
				if ar.Records > 0 && !ar.EndsSigned {
					fmt.Fprintln(cmd.ErrOrStderr(), "WARNING: the archive does not end with a signed base mark: it was written before base marks were signed, or its end was cut off")
				}
				if w := unsealed(ar); w != "" {
					fmt.Fprintln(cmd.ErrOrStderr(), w)
				}
				if !target.given() {
					warn(cmd.ErrOrStderr(), key, audit.Report{})
					return nil
				}
			}
			// The archive is a witness of the store: a store older than it was rolled back,
			// whatever the chain in Redis says.
			if err := checkAgainstArchive(cmd.Context(), store.NewRedis(opened, store.RedisOptions{}), witness); err != nil {
				return err
			}
			if witness != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "the store is at or beyond the archive's record of it (generation %d)\n", witness.Epoch)
			}
			var rep audit.Report
			if archiveFile != "" {
				rep, err = al.VerifyAfter(cmd.Context(), ar, each)
			} else {
				rep, err = al.Verify(cmd.Context(), each)
			}
			if err != nil {
				return legacyHint(err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "OK: %s, chain intact, %s, %s\n", plural(rep.Records, "audit record"), keyed(key), chainSpan(rep))
			if archiveFile != "" && ar.Records+ar.Bases > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "the chain in Redis goes on from the archive's last record %d\n", ar.LastSeq)
			}
			warn(cmd.ErrOrStderr(), key, rep)
			if len(rep.Stripes) > 1 && rep.Stripes[0].StripedMarks == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "WARNING: the log is striped and stripe 0 holds no striped mark (audit/striped.go): sshca older than store layout 3 would read stripe 0 alone and take it for the whole log; `sshca audit archive` appends one")
			}
			return nil
		},
	}
	var archiveOut string
	archive := &cobra.Command{
		Use:   "archive (--redis URL [--cluster | --sentinel-master NAME] | --config FILE) --key-file FILE --out FILE [--accept-legacy-base]",
		Short: "Verify the chain, append its records and a signed base mark to a file (synced), then trim them from Redis",
		Long: `Verify the chain, append its records and a signed base mark to a file (synced), then trim
them from Redis. When the file already holds records, they are verified first and the chain
in Redis must go on from them; records an interrupted run wrote but did not trim are not
written twice. A base mark of the old unsigned form is replaced by a signed one when the file
ends at exactly its record, or with --accept-legacy-base.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !target.given() || archiveOut == "" {
				return errors.New("--redis URL (or --config FILE) and --out FILE are required")
			}
			al, done, key, err := open(cmd)
			if err != nil {
				return err
			}
			defer done()
			f, err := os.OpenFile(archiveOut, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return err
			}
			defer f.Close()
			var newest newestWitness
			prior, err := al.VerifyArchive(f, newest.see)
			witness := newest.store
			if err != nil {
				return fmt.Errorf("%s does not verify, so nothing is appended to it: %w", archiveOut, err)
			}
			// The file's newest record of the store must not be older than the store: an archive
			// of a rolled-back store would make the older state look like the newest.
			st := store.NewRedis(opened, store.RedisOptions{})
			if err := checkAgainstArchive(cmd.Context(), st, witness); err != nil {
				return fmt.Errorf("nothing archived: %w", err)
			}
			// The store's marks as of now go into the chain, and so into this archive.
			if w, err := st.Witnessed(cmd.Context()); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: the archive holds no record of the store's generation: %v\n", err)
			} else if err := audit.New(opened, audit.Options{Key: key, Marks: st}).Append(cmd.Context(), ca.AuditRecord{Time: time.Now().UTC(),
				Action: ca.ActionAdmin, Outcome: ca.OutcomeDone, Identity: "sshca audit archive", Target: archiveTarget, Store: &w}); err != nil {
				return fmt.Errorf("audit archive: the record of the store's generation: %w", err)
			}
			rep, err := al.Archive(cmd.Context(), f, &prior)
			if cerr := f.Close(); err == nil && cerr != nil {
				err = cerr
			}
			if err != nil {
				return legacyHint(err)
			}
			goesOn := fmt.Sprintf("record %d", rep.BaseSeq)
			if len(rep.Stripes) > 1 {
				var parts []string
				for _, s := range rep.Stripes {
					parts = append(parts, fmt.Sprintf("stripe %d from record %d", s.Stripe, s.BaseSeq))
				}
				goesOn = strings.Join(parts, ", ")
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "archived %s to %s (%s) and trimmed them from Redis; the chain in Redis goes on from %s\n", plural(rep.Records, "audit record"), archiveOut, keyed(key), goesOn)
			warn(cmd.ErrOrStderr(), key, rep)
			return nil
		},
	}
	archive.Flags().StringVar(&archiveOut, "out", "", "the archive file (appended to, mode 0600)")
	for _, c := range []*cobra.Command{verify, archive} {
		addRedisTargetFlags(c.Flags(), &target, "", "of the store")
		c.Flags().StringVar(&keyFile, "key-file", "", "the audit key (audit.key_file of the CA)")
		c.Flags().BoolVar(&acceptLegacy, "accept-legacy-base", false, "accept a base mark of the old unsigned form that no archive vouches for (once, when moving a log from before base marks were signed)")
	}
	verify.Flags().StringVar(&archiveFile, "archive", "", "verify an archive file; with --redis, the chain in Redis must go on from its last record")
	verify.Flags().BoolVar(&print, "print", false, "print each record (JSON lines) as it is checked")
	cmd.AddCommand(genkey, verify, archive, newAuditReportCommand())
	return cmd
}
