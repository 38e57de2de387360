package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/bastion"
)

// newSessionsCommand reads the recordings a bastion agent keeps (--recordings of sshca
// bastion agent). Shipping them to the CA is not built yet, so these run on the bastion.
func newSessionsCommand() *cobra.Command {
	var dir string
	root := &cobra.Command{Use: "sessions", Short: "List, play, export and verify recorded sessions (on the bastion)"}
	root.PersistentFlags().StringVar(&dir, "dir", "/var/lib/sshca/recordings", "the agent's recordings directory")

	open := func(id string) (*bastion.Recording, error) {
		if id == "" || strings.ContainsAny(id, "/\\.") {
			return nil, fmt.Errorf("session ID %q: give the ID that sshca sessions list prints", id)
		}
		f, err := os.Open(filepath.Join(dir, id+".rec"))
		if err != nil {
			return nil, fmt.Errorf("session %s: %w", id, err)
		}
		defer f.Close()
		return bastion.ReadRecording(f)
	}

	var user string
	var since time.Duration
	list := &cobra.Command{
		Use:   "list [--user U] [--since 24h]",
		Short: "One line per recording: ID, start, user, key ID, kind, command, state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			paths, err := filepath.Glob(filepath.Join(dir, "*.rec"))
			if err != nil {
				return err
			}
			var recs []*bastion.Recording
			var broken []string
			for _, p := range paths {
				r, err := open(strings.TrimSuffix(filepath.Base(p), ".rec"))
				if err != nil {
					broken = append(broken, filepath.Base(p))
					continue
				}
				if (user != "" && r.Header.User != user) || (since > 0 && time.Since(r.Header.Start) > since) {
					continue
				}
				recs = append(recs, r)
			}
			sort.Slice(recs, func(i, j int) bool { return recs[i].Header.Start.Before(recs[j].Header.Start) })
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tSTART\tUSER\tKEY ID\tKIND\tSTATE\tCOMMAND")
			for _, r := range recs {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%q\n", r.Header.ID, r.Header.Start.Format(time.RFC3339), r.Header.User,
					r.Header.KeyID, r.Header.Kind, state(r), r.Header.Command)
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
	list.Flags().StringVar(&user, "user", "", "only sessions of this account")
	list.Flags().DurationVar(&since, "since", 0, "only sessions started this long ago or later")

	var speed float64
	play := &cobra.Command{
		Use:   "play ID [--speed 2]",
		Short: "Replay a session's output in real time (divided by --speed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if speed <= 0 {
				return fmt.Errorf("--speed %v: give a positive factor", speed)
			}
			r, err := open(args[0])
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
			r, err := open(args[0])
			if err != nil {
				return err
			}
			return bastion.ExportAsciicast(cmd.OutOrStdout(), r)
		},
	}

	verify := &cobra.Command{
		Use:   "verify ID",
		Short: "Check a recording's hash chain; print its final hash and whether it ended, was capped or spooled",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := open(args[0])
			if err != nil {
				return err
			}
			printVerified(cmd.OutOrStdout(), r)
			return nil
		},
	}
	root.AddCommand(list, play, export, verify)
	return root
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
