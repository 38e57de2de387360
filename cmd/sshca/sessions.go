package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

// sessionsFlags say where recordings are read: the CA (--server, what agents shipped; policy
// kind read) or, with --dir or without a server, an agent's recordings directory on the
// bastion.
type sessionsFlags struct {
	dir, server, tokenEnv, tokenFile string
}

// sessionSource reads recordings from the CA or from a directory.
type sessionSource interface {
	list(ctx context.Context, q client.RecordingQuery) ([]listedSession, []string, error)
	open(ctx context.Context, id string) (*ca.Recording, *ca.SessionRecording, error)
}

// listedSession is one line of sessions list.
type listedSession struct {
	rec  *ca.Recording        // read locally
	meta *ca.SessionRecording // from the CA
}

func (f sessionsFlags) source(cmd *cobra.Command) (sessionSource, error) {
	if f.server == "" || cmd.Flags().Changed("dir") {
		return dirSource{f.dir}, nil
	}
	token, err := readToken(f.tokenEnv, f.tokenFile)
	if err != nil {
		return nil, err
	}
	return caSource{server: f.server, token: token}, nil
}

func checkSessionID(id string) error {
	if id == "" || strings.ContainsAny(id, "/\\.") {
		return fmt.Errorf("session ID %q: give the ID that sshca sessions list prints", id)
	}
	return nil
}

type dirSource struct{ dir string }

func (d dirSource) open(_ context.Context, id string) (*ca.Recording, *ca.SessionRecording, error) {
	if err := checkSessionID(id); err != nil {
		return nil, nil, err
	}
	f, err := os.Open(filepath.Join(d.dir, id+".rec"))
	if err != nil {
		return nil, nil, fmt.Errorf("session %s: %w", id, err)
	}
	defer f.Close()
	r, err := bastion.ReadRecording(f)
	return r, nil, err
}

func (d dirSource) list(ctx context.Context, q client.RecordingQuery) ([]listedSession, []string, error) {
	// Glob finds nothing in a directory that is not there, so without this a mistyped --dir,
	// or sessions list run away from a bastion without --server, would print an empty table
	// as if nobody had been recorded.
	if fi, err := os.Stat(d.dir); err != nil || !fi.IsDir() {
		return nil, nil, fmt.Errorf("recordings directory %s: not a readable directory; on a bastion give --dir (the agent's --recordings), elsewhere --server or SSHCA_SERVER to read what agents shipped to the CA", d.dir)
	}
	paths, err := filepath.Glob(filepath.Join(d.dir, "*.rec"))
	if err != nil {
		return nil, nil, err
	}
	var out []listedSession
	var broken []string
	for _, p := range paths {
		r, _, err := d.open(ctx, strings.TrimSuffix(filepath.Base(p), ".rec"))
		if err != nil {
			broken = append(broken, filepath.Base(p))
			continue
		}
		h := r.Header
		if (q.Principal != "" && h.User != q.Principal) || (!q.Since.IsZero() && h.Start.Before(q.Since)) ||
			(q.Identity != "" && ca.KeyIDIdentity(h.KeyID) != q.Identity && h.KeyID != q.Identity) || (q.Live && r.End != nil) {
			continue
		}
		out = append(out, listedSession{rec: r})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rec.Header.Start.Before(out[j].rec.Header.Start) })
	return out, broken, nil
}

type caSource struct{ server, token string }

func (c caSource) list(ctx context.Context, q client.RecordingQuery) ([]listedSession, []string, error) {
	recs, err := apiClient(ctx, c.server).Recordings(ctx, c.token, q)
	if err != nil {
		return nil, nil, cliError(err)
	}
	out := make([]listedSession, len(recs))
	for i := range recs {
		out[i] = listedSession{meta: &recs[i]}
	}
	return out, nil, nil
}

func (c caSource) open(ctx context.Context, id string) (*ca.Recording, *ca.SessionRecording, error) {
	if err := checkSessionID(id); err != nil {
		return nil, nil, err
	}
	d, err := apiClient(ctx, c.server).Recording(ctx, c.token, id)
	if err != nil {
		return nil, nil, cliError(err)
	}
	r, err := ca.ReadRecording(strings.NewReader(strings.Join(d.Lines, "\n") + "\n"))
	if err != nil {
		return nil, &d.Recording, fmt.Errorf("session %s as the CA keeps it: %w", id, err)
	}
	return r, &d.Recording, nil
}

// newSessionsCommand reads recorded sessions: from the CA (--server), where bastion agents
// ship them, or from an agent's recordings directory (--dir) on the bastion.
func newSessionsCommand() *cobra.Command {
	var f sessionsFlags
	root := &cobra.Command{
		Use:   "sessions",
		Short: "List, play, export and verify recorded sessions (at the CA with --server, or on the bastion with --dir)",
	}
	root.PersistentFlags().StringVar(&f.dir, "dir", "/var/lib/sshca/recordings", "the agent's recordings directory (read on the bastion; wins over --server)")
	root.PersistentFlags().StringVar(&f.server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL to read the shipped recordings from (env SSHCA_SERVER)")
	root.PersistentFlags().StringVar(&f.tokenEnv, "token-env", "SSHCA_TOKEN", "environment variable holding the bearer token (--server)")
	root.PersistentFlags().StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token (--server)")

	var q client.RecordingQuery
	var since string
	list := &cobra.Command{
		Use:   "list [--identity X] [--principal root] [--since 1d] [--live]",
		Short: "One line per recording: ID, start, host, account, key ID, kind, state, command",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since != "" {
				d, err := parseSince(since)
				if err != nil {
					return err
				}
				q.Since = time.Now().Add(-d)
			}
			src, err := f.source(cmd)
			if err != nil {
				return err
			}
			sessions, broken, err := src.list(cmd.Context(), q)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tSTART\tHOST\tUSER\tKEY ID\tKIND\tSTATE\tCOMMAND")
			for _, s := range sessions {
				h, st := sessionLine(s)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%q\n", h.ID, h.Start.Format(time.RFC3339), h.Host, h.User, h.KeyID, h.Kind, st, h.Command)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if len(broken) > 0 {
				return fmt.Errorf("recordings that do not verify (run sshca sessions verify): %s", strings.Join(broken, ", "))
			}
			return nil
		},
	}
	list.Flags().StringVar(&q.Identity, "identity", "", "only sessions of this identity (the key ID's identity part, or the whole key ID)")
	list.Flags().StringVar(&q.Principal, "principal", "", "only sessions as this account (e.g. root)")
	list.Flags().StringVar(&q.Principal, "user", "", "the same as --principal")
	list.Flags().StringVar(&since, "since", "", "only sessions started within this period: days (1d) or a duration (12h)")
	list.Flags().BoolVar(&q.Live, "live", false, "only sessions without an end yet (running, or unterminated)")

	var speed float64
	play := &cobra.Command{
		Use:   "play ID [--speed 2]",
		Short: "Replay a session's output in real time (divided by --speed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if speed <= 0 {
				return fmt.Errorf("--speed %v: give a positive factor", speed)
			}
			src, err := f.source(cmd)
			if err != nil {
				return err
			}
			r, _, err := src.open(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var at int64
			for _, c := range r.Chunks {
				if c.Kind != bastion.ChunkOutput && c.Kind != bastion.ChunkStderr {
					continue
				}
				time.Sleep(time.Duration(float64(c.T-at)/speed) * time.Microsecond)
				at = c.T
				if _, err := cmd.OutOrStdout().Write(c.Data); err != nil {
					return err
				}
			}
			return nil
		},
	}
	play.Flags().Float64Var(&speed, "speed", 1, "playback speed factor")

	export := &cobra.Command{
		Use:   "export ID > s.cast",
		Short: "Write a session as asciicast v2 (a rendering: split UTF-8 joined, invalid bytes replaced)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := f.source(cmd)
			if err != nil {
				return err
			}
			r, _, err := src.open(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return bastion.ExportAsciicast(cmd.OutOrStdout(), r)
		},
	}

	var av auditVerifyFlags
	verify := &cobra.Command{
		Use:   "verify ID [--audit-redis URL [--audit-cluster | --audit-sentinel-master NAME] | --audit-config FILE] [--audit-key-file FILE]",
		Short: "Check a recording's hash chain and, with --audit-redis, its start and end records in the verified audit log",
		Long: `Check a recording's hash chain and print its final hash and whether it ended, was capped
or spooled. With --audit-redis (the CA's Redis, as for sshca audit report) and --audit-key-file,
the audit chain is verified too and the session's start and end records must be in it: the
start record naming the recording's certificate and account, the end record its final hash
and exit status. A recording changed after the CA kept its end record does not verify.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := f.source(cmd)
			if err != nil {
				return err
			}
			r, meta, err := src.open(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			printVerified(out, r)
			if meta != nil && meta.Last != r.Final {
				return fmt.Errorf("the CA's lines end at %s, its record of the session at %s: the recording store was changed", r.Final, meta.Last)
			}
			if !av.redis.given() {
				fmt.Fprintln(out, "audit: not checked (give --audit-redis and --audit-key-file)")
				return nil
			}
			return verifySessionAudit(cmd.Context(), out, cmd.ErrOrStderr(), av, r)
		},
	}
	addRedisTargetFlags(verify.Flags(), &av.redis, "audit-", "of the CA's store, to find the session's audit records")
	verify.Flags().StringVar(&av.keyFile, "audit-key-file", "", "the audit key (audit.key_file of the CA)")
	root.AddCommand(list, play, export, verify)
	return root
}

// sessionLine is a listed session's header and state.
func sessionLine(s listedSession) (ca.RecordingHeader, string) {
	if s.rec != nil {
		return s.rec.Header, state(s.rec)
	}
	m := s.meta
	h := m.Header
	h.Host = m.Host
	var st []string
	if m.End == nil {
		st = append(st, "live")
	} else {
		st = append(st, fmt.Sprintf("exit %d", m.End.Exit))
	}
	if m.Dropped != "" {
		st = append(st, m.Dropped+"-capped")
	}
	if m.Cut != nil {
		st = append(st, "ca-"+m.Cut.Cap+"-capped")
	}
	if h.Spooled {
		st = append(st, "spooled")
	}
	return h, strings.Join(st, ",")
}

func state(r *bastion.Recording) string {
	var s []string
	if r.End == nil {
		s = append(s, "unterminated")
	} else {
		s = append(s, fmt.Sprintf("exit %d", r.End.Exit))
	}
	if r.Dropped != "" {
		s = append(s, r.Dropped+"-capped")
	}
	if r.Cut.Cap != "" {
		s = append(s, "ca-"+r.Cut.Cap+"-capped")
	}
	if r.Header.Spooled {
		s = append(s, "spooled")
	}
	return strings.Join(s, ",")
}

func printVerified(w io.Writer, r *bastion.Recording) {
	fmt.Fprintf(w, "chain: ok (%d chunks)\nfinal: %s\n", len(r.Chunks), r.Final)
	if r.End == nil {
		fmt.Fprintln(w, "end: none: the recording is unterminated (the recorder or the agent stopped before the session ended; later output may be unrecorded)")
	} else {
		fmt.Fprintf(w, "end: exit %d\n", r.End.Exit)
	}
	if r.Dropped != "" {
		fmt.Fprintf(w, "capped: the %s cap was reached; %d bytes after it were not recorded\n", r.Dropped, dropped(r))
	}
	if r.Cut.Cap != "" {
		fmt.Fprintf(w, "cut: past the CA's %s cap, %d chunks (%d bytes) were not kept; the CA checked their chain on arrival, and the chain goes on from the hash it kept\n",
			r.Cut.Cap, r.Cut.Chunks, r.Cut.Bytes)
	}
	if r.Header.Spooled {
		fmt.Fprintln(w, "spooled: written by the recorder as the session user while the agent was unreachable; the chain proves nothing against that user")
	}
}

func dropped(r *bastion.Recording) int64 {
	if r.End == nil {
		return 0
	}
	return r.End.Dropped
}

type auditVerifyFlags struct {
	redis   redisTarget
	keyFile string
}

// verifySessionAudit verifies the audit chain and checks the session's start and end records
// against the recording: the start record must name its certificate (serial, key ID) and
// account, the end record its final hash and exit status.
func verifySessionAudit(ctx context.Context, out, errOut io.Writer, f auditVerifyFlags, r *ca.Recording) error {
	var key []byte
	if f.keyFile != "" {
		var err error
		if key, err = readAuditKey(f.keyFile); err != nil {
			return fmt.Errorf("--audit-key-file: %w", err)
		}
	}
	rdb, err := f.redis.open(ctx, nil, 10*time.Second, nil, nil)
	if err != nil {
		return err
	}
	defer rdb.Close()
	var start, end *ca.AuditRecord
	_, err = audit.New(rdb, audit.Options{Key: key}).Verify(ctx, func(e audit.Entry) {
		rec := e.Record
		if rec.Action != ca.ActionSession || rec.Session == nil || rec.Session.ID != r.Header.ID {
			return
		}
		switch rec.Event {
		case "start":
			start = &rec
		case "end":
			end = &rec
		}
	})
	if err != nil {
		return fmt.Errorf("the audit chain does not verify: %w", err)
	}
	if key == nil {
		fmt.Fprintln(errOut, "WARNING: without --audit-key-file the audit chain is checked as plain SHA-256, which anyone who can write to Redis can recompute")
	}
	h := r.Header
	var problems []string
	switch {
	case start == nil:
		problems = append(problems, "no start record of the session in the audit log")
	case start.KeyID != h.KeyID || start.Session.User != h.User || fmt.Sprint(start.Serial) != orZero(h.Serial):
		problems = append(problems, fmt.Sprintf("the start record names key ID %q serial %d as %s, the recording key ID %q serial %s as %s",
			start.KeyID, start.Serial, start.Session.User, h.KeyID, h.Serial, h.User))
	default:
		fmt.Fprintf(out, "audit: start record at %s (serial %d, key ID %s, on %s as %s)\n", start.Time.Format(time.RFC3339), start.Serial, start.KeyID, start.Session.Host, start.Session.User)
	}
	switch {
	case r.End == nil && end == nil:
		fmt.Fprintln(out, "audit: no end record: the session has not ended, or its end never reached the CA (unterminated)")
	case r.End != nil && end == nil:
		problems = append(problems, "the recording ended but the audit log has no end record of it")
	case r.End == nil:
		problems = append(problems, "the audit log has an end record, the recording no end: its end was removed")
	case end.Session.Final != r.Final:
		problems = append(problems, fmt.Sprintf("the end record's final hash is %s, the recording's %s: the recording was changed after its end was audited", end.Session.Final, r.Final))
	case end.Session.Exit == nil || *end.Session.Exit != r.End.Exit:
		problems = append(problems, "the end record's exit status differs from the recording's")
	default:
		fmt.Fprintf(out, "audit: end record at %s, final hash matches, exit %d\n", end.Time.Format(time.RFC3339), *end.Session.Exit)
		if len(end.Session.Commands) > 0 {
			what := "commands"
			if end.Session.CommandsBestEffort {
				what = "commands (best effort, as the terminal echoed them)"
			}
			fmt.Fprintf(out, "%s: %q\n", what, end.Session.Commands)
		}
	}
	if len(problems) > 0 {
		return errors.New("audit: " + strings.Join(problems, "; "))
	}
	return nil
}

func orZero(serial string) string {
	if serial == "" {
		return "0"
	}
	return serial
}
