package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
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

// archiveLostTarget is the target of the record that `sshca audit archive
// --accept-lost-archive` appends when the file the last run wrote is lost: its reason says
// which file, and what Redis recorded of it.
const archiveLostTarget = "audit archive lost"

// archiveWitness verifies the archive at path with al's key and returns what it found and
// the store witness of its newest archive record (nil when it holds none: written before
// archives held one). each, when not nil, sees every record.
func archiveWitness(al *audit.Log, path string, each func(audit.Entry)) (audit.ArchiveReport, *ca.StoreWitness, error) {
	f, err := os.Open(path)
	if err != nil {
		return audit.ArchiveReport{}, nil, err
	}
	defer f.Close()
	return archiveWitnessOf(al, f, each)
}

// archiveWitnessOf is archiveWitness of the open file f, read from its start.
func archiveWitnessOf(al *audit.Log, f io.ReaderAt, each func(audit.Entry)) (audit.ArchiveReport, *ca.StoreWitness, error) {
	var w newestWitness
	ar, err := al.VerifyArchive(io.NewSectionReader(f, 0, math.MaxInt64), func(e audit.Entry) {
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

// unvouchedEnd says why nothing in an archive vouches for its end, "" when something does: a
// striped log's archive must end with a seal, one of a log without stripes (holding records)
// with a signed base mark, each written last by every archive run. Without Redis (which
// records the last run's seal, and the base marks) an archive cut back to a line boundary
// inside its last run reads as a run interrupted before its seal; so `audit verify --archive`
// alone refuses such an archive unless --accept-unsealed-end.
func unvouchedEnd(ar audit.ArchiveReport) string {
	switch {
	case len(ar.Stripes) > 1 && !ar.Sealed:
		return "the archive of a striped log does not end with a seal"
	case len(ar.Stripes) <= 1 && ar.Records > 0 && !ar.EndsSigned:
		return "the archive does not end with a signed base mark"
	}
	return ""
}

// unvouchedRisk is what --accept-unsealed-end accepts.
const unvouchedRisk = "its last run was interrupted before it finished (`sshca audit archive` to the file again completes it), or lines were cut from its end, or it was written by sshca before base marks were signed or before seals (stop 15); alone, nothing shows which: verify it with --redis (the chain in Redis must go on from it, and Redis records the last run's seal), or give --accept-unsealed-end to accept that lines cut from its end would not show"

// priorArchive verifies the archive file f (at path) that a run appends to, and returns what
// it holds, its newest record of the store, and the offset to truncate it to before
// appending (its size when nothing is to go). A run interrupted while writing can leave a
// last line without its newline (Archive writes whole lines, each with one): when the lines
// before it verify and hold the seal the last completed run recorded in Redis, the line is of
// a run that never finished, whose records Redis still holds (nothing is trimmed before the
// file is synced and its seal recorded), and it goes. A line cut short anywhere else, or
// before that seal, refuses the file.
func priorArchive(ctx context.Context, al *audit.Log, f *os.File, path string) (audit.ArchiveReport, *ca.StoreWitness, int64, error) {
	st, err := f.Stat()
	if err != nil {
		return audit.ArchiveReport{}, nil, 0, err
	}
	end, err := afterLastNewline(f, st.Size())
	if err != nil {
		return audit.ArchiveReport{}, nil, 0, err
	}
	var newest newestWitness
	prior, err := al.VerifyArchive(io.NewSectionReader(f, 0, end), newest.see)
	if err != nil {
		return prior, nil, 0, fmt.Errorf("%s does not verify, so nothing is appended to it: %w", path, err)
	}
	if end < st.Size() {
		if _, err := al.CheckSealed(ctx, prior); err != nil {
			return prior, nil, 0, fmt.Errorf("%s ends inside a line (%d bytes without a newline), and the lines before it do not hold the last archive run's seal, so nothing is appended to it: %w", path, st.Size()-end, err)
		}
	}
	return prior, newest.store, end, nil
}

// afterLastNewline is the offset just after the last '\n' among the first size bytes of f
// (0: none; size when the last byte is one).
func afterLastNewline(f io.ReaderAt, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(end-int64(len(buf)), 0)
		b := buf[:end-start]
		if _, err := f.ReadAt(b, start); err != nil && err != io.EOF {
			return 0, err
		}
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			return start + int64(i) + 1, nil
		}
		end = start
	}
	return 0, nil
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
	var print, acceptLegacy, acceptUnsealed bool
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
		Use:   "verify (--redis URL [--cluster | --sentinel-master NAME] | --config FILE | --archive FILE | both) [--key-file FILE] [--print] [--accept-legacy-base] [--accept-unsealed-end]",
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
				af, err := openArchiveToVerify(cmd.Context(), al, archiveFile, target.given())
				if err != nil {
					return err
				}
				defer af.Close()
				if ar, witness, err = archiveWitnessOf(al, af, each); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "OK: %s, chain intact, %s, %s, last %.16s\n",
					plural(ar.Records, "audit record"), keyed(key), archiveSpan(ar), ar.LastMAC)
				if !target.given() && ar.Records == 0 && ar.Bases == 0 && ar.Seals == 0 && !acceptUnsealed {
					return fmt.Errorf("%s holds nothing: it was emptied (restore it from a backup), or no archive run wrote it yet (every run writes at least its record of the store); with --redis, Redis says which file the last run wrote; --accept-unsealed-end accepts an empty file", archiveFile)
				}
				if !target.given() {
					// Alone, the archive's last line must vouch for its end.
					if u := unvouchedEnd(ar); u != "" && !acceptUnsealed {
						return fmt.Errorf("%s: %s", u, unvouchedRisk)
					} else if u != "" {
						fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: %s, accepted because of --accept-unsealed-end: lines cut from its end would not show\n", u)
					}
					warn(cmd.ErrOrStderr(), key, audit.Report{})
					return nil
				}
				if ar.Records > 0 && !ar.EndsSigned {
					fmt.Fprintln(cmd.ErrOrStderr(), "WARNING: the archive does not end with a signed base mark: it was written before base marks were signed, or its end was cut off")
				}
				if w := unsealed(ar); w != "" {
					fmt.Fprintln(cmd.ErrOrStderr(), w)
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
			if archiveFile != "" && ar.Seals > 0 && !rep.SealRecorded {
				fmt.Fprintln(cmd.ErrOrStderr(), "WARNING: Redis records no seal of the last archive run (archived by sshca before stop 17): only the base marks vouch for the archive's end, so the lines of a stripe that only its last run holds, cut out with its seal, would not show; the next `sshca audit archive` records one")
			}
			warn(cmd.ErrOrStderr(), key, rep)
			if len(rep.Stripes) > 1 && rep.Stripes[0].StripedMarks == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "WARNING: the log is striped and stripe 0 holds no striped mark (audit/striped.go): sshca older than store layout 3 would read stripe 0 alone and take it for the whole log; `sshca audit archive` appends one")
			}
			return nil
		},
	}
	var archiveOut, previousArchive string
	var acceptLost bool
	archive := &cobra.Command{
		Use:   "archive (--redis URL [--cluster | --sentinel-master NAME] | --config FILE) --key-file FILE --out FILE [--accept-legacy-base]",
		Short: "Verify the chain, append its records and a signed base mark to a file (synced), then trim them from Redis",
		Long: `Verify the chain, append its records and a signed base mark to a file (synced), then trim
them from Redis. When the file already holds records, they are verified first and the chain
in Redis must go on from them; records an interrupted run wrote but did not trim are not
written twice. A base mark of the old unsigned form is replaced by a signed one when the file
ends at exactly its record, or with --accept-legacy-base.

On a striped log each run ends with a seal line, which Redis records once the file is synced
and before anything is trimmed; a file that lacks the seal Redis recorded (cut back before
it) is refused. A run interrupted between writing the file and trimming Redis is completed by
the next run to the same file; a last line it left without its newline is dropped first, once
the lines before it hold the recorded seal (Redis still holds that line's records).`,
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
			_, statErr := os.Stat(archiveOut)
			gone := errors.Is(statErr, fs.ErrNotExist)
			f, err := os.OpenFile(archiveOut, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return err
			}
			defer f.Close()
			// One run writes a file at a time; the lock goes with the process.
			if err := lockArchive(f, archiveOut, false); err != nil {
				return err
			}
			size, err := f.Seek(0, io.SeekEnd)
			if err != nil {
				return err
			}
			// The file the last run wrote must still be whole, whether this run appends to it
			// or starts a new one: an archive deleted or emptied would otherwise read as a new
			// file, and its records, gone from Redis, would be lost with nobody told.
			rec, err := al.RecordedArchiveFile(cmd.Context())
			if err != nil {
				return err
			}
			st := store.NewRedis(opened, store.RedisOptions{})
			var lost *lostArchiveError
			if err := checkArchiveRun(rec, f, archiveOut, size, gone, previousArchive); errors.As(err, &lost) && acceptLost && size == 0 {
				// Loud, and kept: the record goes into the chain, so into the new file.
				fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: ARCHIVE LOST, ACCEPTED WITH --accept-lost-archive: %v\nWARNING: the records archived there exist nowhere else now; this run starts %s anew and records the loss in the audit log\n", lost, archiveOut)
				if err := audit.New(opened, audit.Options{Key: key, Marks: st}).Append(cmd.Context(), ca.AuditRecord{Time: time.Now().UTC(),
					Action: ca.ActionAdmin, Outcome: ca.OutcomeDone, Identity: "sshca audit archive", Target: archiveLostTarget,
					Reason: lost.Error() + "; accepted with --accept-lost-archive, starting " + archiveOut}); err != nil {
					return fmt.Errorf("audit archive: the record of the lost archive (nothing archived): %w", err)
				}
			} else if err != nil {
				if gone && stillNamed(f, archiveOut) == nil {
					os.Remove(archiveOut) // the file this run created: a refused run leaves none
				}
				return fmt.Errorf("nothing archived: %w", err)
			}
			prior, witness, end, err := priorArchive(cmd.Context(), al, f, archiveOut)
			if err != nil {
				return err
			}
			// The file's newest record of the store must not be older than the store: an archive
			// of a rolled-back store would make the older state look like the newest.
			if err := checkAgainstArchive(cmd.Context(), st, witness); err != nil {
				return fmt.Errorf("nothing archived: %w", err)
			}
			if fi, err := f.Stat(); err != nil {
				return err
			} else if end < fi.Size() {
				if err := f.Truncate(end); err != nil {
					return fmt.Errorf("%s: dropping the line an interrupted run cut short: %w", archiveOut, err)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "dropped the last %d bytes of %s, a line without its newline: an archive run was interrupted while writing it, and Redis still holds its records\n", fi.Size()-end, archiveOut)
			}
			// The store's marks as of now go into the chain, and so into this archive.
			if w, err := st.Witnessed(cmd.Context()); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: the archive holds no record of the store's generation: %v\n", err)
			} else if err := audit.New(opened, audit.Options{Key: key, Marks: st}).Append(cmd.Context(), ca.AuditRecord{Time: time.Now().UTC(),
				Action: ca.ActionAdmin, Outcome: ca.OutcomeDone, Identity: "sshca audit archive", Target: archiveTarget, Store: &w}); err != nil {
				return fmt.Errorf("audit archive: the record of the store's generation: %w", err)
			}
			rep, err := al.ArchiveWith(cmd.Context(), f, &prior, audit.ArchiveOptions{Synced: archiveFileOf(f, archiveOut)})
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
	archive.Flags().BoolVar(&acceptLost, "accept-lost-archive", false, "start --out anew although the archive file the last run wrote is gone, empty or cut back (Redis records which): the records it held are then lost; the run says so and records the loss in the audit log")
	archive.Flags().StringVar(&previousArchive, "previous-archive", "", "where the file the last run wrote is now (moved, or a copy from its host), checked before --out starts a new file")
	for _, c := range []*cobra.Command{verify, archive} {
		addRedisTargetFlags(c.Flags(), &target, "", "of the store")
		c.Flags().StringVar(&keyFile, "key-file", "", "the audit key (audit.key_file of the CA)")
		c.Flags().BoolVar(&acceptLegacy, "accept-legacy-base", false, "accept a base mark of the old unsigned form that no archive vouches for (once, when moving a log from before base marks were signed)")
	}
	verify.Flags().StringVar(&archiveFile, "archive", "", "verify an archive file; with --redis, the chain in Redis must go on from its last record")
	verify.Flags().BoolVar(&print, "print", false, "print each record (JSON lines) as it is checked")
	verify.Flags().BoolVar(&acceptUnsealed, "accept-unsealed-end", false, "with --archive alone: accept an archive whose last line does not vouch for its end (no seal, or no signed base mark: a run interrupted, lines cut from its end, or written before seals); lines cut from its end would not show")
	cmd.AddCommand(genkey, verify, archive, newAuditReportCommand())
	return cmd
}
