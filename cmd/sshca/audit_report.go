package main

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
)

// grant is one privileged grant in an access report: an access request (approved or
// break-glass) with the certificates issued under it, or a certificate issued with a ticket
// outside any request (the shipped policy asks for a ticket for privileged principals only).
type grant struct {
	Time       time.Time `json:"time"`
	Requester  string    `json:"requester"`
	Principals []string  `json:"principals"`
	Ticket     string    `json:"ticket,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Request    string    `json:"request,omitempty"`
	BreakGlass bool      `json:"break_glass,omitempty"`
	// Reviewer is who reviewed a break-glass grant ("" while the review is missing).
	Reviewer  string   `json:"reviewer,omitempty"`
	Approvers []string `json:"approvers,omitempty"`
	Serials   []string `json:"serials,omitempty"`
	// Revoked are the serials revoked since, and Ended how the request ended early
	// ("cancel", "revoke") if it did.
	Revoked []string `json:"revoked,omitempty"`
	Ended   string   `json:"ended,omitempty"`
	// approved says the grant was used or taken: a certificate was issued under the request,
	// or it was break-glass (a request that only waited, or was denied, is left out).
	approved bool
}

// accessReport builds the privileged grants from verified audit records (oldest first) made
// at or after since, for identity (a canonical name, a verified e-mail or a username; "" for
// all) and principal ("" for all).
func accessReport(recs []ca.AuditRecord, since time.Time, identity, principal string) []grant {
	byRequest := map[string]*grant{}
	bySerial := map[string]*grant{}
	var order []*grant
	aliases := map[string][]string{} // canonical identity → its aliases, from issued records
	add := func(g *grant) { order = append(order, g) }
	for _, r := range recs {
		if r.Outcome != "allowed" && r.Outcome != "issued" {
			continue
		}
		if r.Outcome == "issued" && len(r.Aliases) > 0 {
			aliases[r.Identity] = r.Aliases
		}
		switch {
		case r.Action == ca.ActionRequest && r.Event == "create":
			g := &grant{Time: r.Time, Requester: r.Identity, Principals: r.Requested, Ticket: r.Ticket, Reason: r.Reason,
				Request: r.AccessRequest, BreakGlass: r.BreakGlass, approved: r.BreakGlass}
			byRequest[r.AccessRequest] = g
			add(g)
		case r.Action == ca.ActionApprove && r.Event == "approve":
			if g := byRequest[r.AccessRequest]; g != nil {
				g.Approvers = r.Approvers
			}
		case r.Action == ca.ActionApprove && r.Event == "review":
			if g := byRequest[r.AccessRequest]; g != nil {
				g.Reviewer = r.Identity
			}
		case (r.Event == "cancel" || r.Event == "revoke") && r.AccessRequest != "":
			if g := byRequest[r.AccessRequest]; g != nil {
				g.Ended = r.Event
				g.Revoked = append(g.Revoked, g.Serials...)
			}
		case r.Outcome == "issued" && r.Action == ca.ActionUser:
			serial := strconv.FormatUint(r.Serial, 10)
			if g := byRequest[r.AccessRequest]; r.AccessRequest != "" && g != nil {
				g.Serials = append(g.Serials, serial)
				g.approved = true
				bySerial[serial] = g
				continue
			}
			if r.Ticket == "" {
				continue // not privileged under the shipped policy
			}
			g := &grant{Time: r.Time, Requester: r.Identity, Principals: r.Principals, Ticket: r.Ticket, Reason: r.Reason,
				Serials: []string{serial}, approved: true}
			bySerial[serial] = g
			add(g)
		case r.Action == ca.ActionRevoke && strings.HasPrefix(r.Target, "serial:"):
			serial := strings.TrimPrefix(r.Target, "serial:")
			if g := bySerial[serial]; g != nil && !slices.Contains(g.Revoked, serial) {
				g.Revoked = append(g.Revoked, serial)
			}
		}
	}
	var out []grant
	for _, g := range order {
		if !g.approved || g.Time.Before(since) {
			continue
		}
		if principal != "" && !slices.Contains(g.Principals, principal) {
			continue
		}
		if identity != "" && !identityMatch(identity, g.Requester, aliases[g.Requester]) {
			continue
		}
		g.Revoked = dedupeSorted(g.Revoked)
		out = append(out, *g)
	}
	return out
}

func identityMatch(want, canonical string, aliases []string) bool {
	if want == canonical {
		return true
	}
	c, alias := ca.IdentityForm(want)
	return c == canonical || (alias != "" && slices.Contains(aliases, alias))
}

func dedupeSorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

// parseSince reads --since: a number of days ("30d") or a Go duration ("12h").
func parseSince(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("--since %q: want days (30d) or a duration (12h)", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("--since %q: want days (30d) or a duration (12h)", s)
	}
	return d, nil
}

func writeReport(w io.Writer, format string, grants []grant) error {
	switch format {
	case "json":
		if grants == nil {
			grants = []grant{}
		}
		return printJSON(w, grants)
	case "csv":
		cw := csv.NewWriter(w)
		_ = cw.Write([]string{"time", "requester", "principals", "ticket", "reason", "request", "break_glass", "reviewer", "approvers", "serials", "revoked", "ended"})
		for _, g := range grants {
			_ = cw.Write([]string{g.Time.UTC().Format(time.RFC3339), g.Requester, strings.Join(g.Principals, " "), g.Ticket, g.Reason,
				g.Request, strconv.FormatBool(g.BreakGlass), g.Reviewer, strings.Join(g.Approvers, " "), strings.Join(g.Serials, " "),
				strings.Join(g.Revoked, " "), g.Ended})
		}
		cw.Flush()
		return cw.Error()
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tREQUESTER\tPRINCIPALS\tTICKET\tREQUEST\tAPPROVED BY\tSERIALS\tREVOKED\tNOTE")
		for _, g := range grants {
			approvers := strings.Join(g.Approvers, ",")
			note := g.Ended
			if g.BreakGlass {
				approvers = "BREAK-GLASS"
				review := "review missing"
				if g.Reviewer != "" {
					review = "reviewed by " + g.Reviewer
				}
				note = strings.TrimPrefix(note+"; "+review, "; ")
			} else if g.Request == "" {
				approvers = "(no request)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Time.Local().Format("2006-01-02 15:04"), oneLine(g.Requester, 80),
				strings.Join(g.Principals, ","), g.Ticket, g.Request, approvers, strings.Join(g.Serials, ","), strings.Join(g.Revoked, ","), note)
		}
		return tw.Flush()
	}
	return fmt.Errorf("--format %q: want table, csv or json", format)
}

func newAuditReportCommand() *cobra.Command {
	var target redisTarget
	var keyFile, archiveFile, since, identity, principal, format string
	cmd := &cobra.Command{
		Use:   "report (--redis URL [--cluster | --sentinel-master NAME] | --config FILE) --key-file FILE [--archive FILE] --since 30d [--identity X] [--principal root] [--format table|csv|json]",
		Short: "Every privileged grant in a period, from the verified audit chain: requester, approvers, ticket, break-glass, serials, revocations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !target.given() && archiveFile == "" {
				return errors.New("give --redis URL or --config FILE (the chain in Redis), --archive FILE, or both")
			}
			window, err := parseSince(since)
			if err != nil {
				return err
			}
			if format != "table" && format != "csv" && format != "json" {
				return fmt.Errorf("--format %q: want table, csv or json", format)
			}
			var key []byte
			if keyFile != "" {
				if key, err = readAuditKey(keyFile); err != nil {
					return fmt.Errorf("--key-file: %w", err)
				}
			}
			var rdb redis.UniversalClient
			if target.given() {
				if rdb, err = target.open(cmd.Context(), cmd.Flags(), 10*time.Second, nil, nil); err != nil {
					return err
				}
				defer rdb.Close()
			}
			al := audit.New(rdb, audit.Options{Key: key})
			// Entries of every stripe, archives first; the report reads them in time order
			// (a request's creation before its approval), each stripe in chain order.
			var entries []audit.Entry
			each := func(e audit.Entry) { entries = append(entries, e) }
			var ar audit.ArchiveReport
			if archiveFile != "" {
				f, err := openArchiveToVerify(cmd.Context(), al, archiveFile, rdb != nil)
				if err != nil {
					return err
				}
				defer f.Close()
				if ar, err = al.VerifyArchive(f, each); err != nil {
					return fmt.Errorf("the archive does not verify; no report: %w", err)
				}
			}
			if rdb != nil {
				if archiveFile != "" {
					_, err = al.VerifyAfter(cmd.Context(), ar, each)
				} else {
					_, err = al.Verify(cmd.Context(), each)
				}
				if err != nil {
					return fmt.Errorf("the audit chain does not verify; no report: %w", err)
				}
			}
			if key == nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "WARNING: without --key-file the chain is checked as plain SHA-256, which anyone who can write to Redis can recompute")
			}
			recs := make([]ca.AuditRecord, 0, len(entries))
			for _, e := range audit.InTimeOrder(entries) {
				recs = append(recs, e.Record)
			}
			grants := accessReport(recs, time.Now().Add(-window), identity, principal)
			return writeReport(cmd.OutOrStdout(), format, grants)
		},
	}
	addRedisTargetFlags(cmd.Flags(), &target, "", "of the store")
	cmd.Flags().StringVar(&keyFile, "key-file", "", "the audit key (audit.key_file of the CA)")
	cmd.Flags().StringVar(&archiveFile, "archive", "", "an archive to read first (the chain in Redis must go on from it)")
	cmd.Flags().StringVar(&since, "since", "30d", "the period: days (30d) or a duration (12h)")
	cmd.Flags().StringVar(&identity, "identity", "", "only grants to this identity: issuer|subject, a verified e-mail or a username")
	cmd.Flags().StringVar(&principal, "principal", "", "only grants of this principal (e.g. root)")
	cmd.Flags().StringVar(&format, "format", "table", "table, csv or json")
	return cmd
}
