package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/client"
)

// requestFlags are the flags every `sshca request` subcommand shares.
type requestFlags struct {
	server    string
	tokenEnv  string
	tokenFile string
}

func (f *requestFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL (env SSHCA_SERVER)")
	cmd.Flags().StringVar(&f.tokenEnv, "token-env", "SSHCA_TOKEN", "environment variable holding the bearer token")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token (instead of --token-env)")
}

func (f *requestFlags) client(ctx context.Context) (*client.Client, string, error) {
	if f.server == "" {
		return nil, "", errors.New("--server is required (or set SSHCA_SERVER)")
	}
	token, err := readToken(f.tokenEnv, f.tokenFile)
	if err != nil {
		return nil, "", err
	}
	return apiClient(ctx, strings.TrimRight(f.server, "/")), token, nil
}

func newRequestCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "request",
		Short: "Just-in-time access: ask for privileged principals for a while, approved by someone else",
		Long: `Just-in-time access: ask for privileged principals for a while, approved by someone else.

  sshca request create --principal root --ttl 30m --reason "OPS-1234 disk full"
  sshca request approve ID          (an approver; never the requester)
  sshca login --request ID          (the requester, once approved)

The policy decides who may ask for what, who may approve, and how many approvals a request
needs. A request that is not decided in time expires; an approved one lasts --ttl.`,
	}
	cmd.AddCommand(newRequestCreateCommand(), newRequestListCommand(), newRequestShowCommand(),
		newRequestDecideCommand("approve"), newRequestDecideCommand("deny"), newRequestDecideCommand("cancel"),
		newRequestDecideCommand("review"))
	return cmd
}

// requestWait is how `sshca request create` waits for a decision: a long poll of the request
// (client.WaitRequest, each holding up to longPoll), asked again at once when it answers; an
// answer with no change that came sooner than interval (a server without the long poll, or
// one that failed) is followed by a pause up to interval, so that the CLI never asks faster.
// after is the timer (nil: time.After; tests inject it).
type requestWait struct {
	interval time.Duration
	longPoll time.Duration // 0: client.RequestWait
	after    func(time.Duration) <-chan time.Time
	now      func() time.Time // nil: time.Now
}

func newRequestCreateCommand() *cobra.Command {
	var f requestFlags
	var principals []string
	var ttl, reason string
	var noWait, breakGlass bool
	wait := requestWait{interval: 2 * time.Second}
	cmd := &cobra.Command{
		Use:   "create --principal P [--principal P] --ttl 30m --reason TEXT [--no-wait]",
		Short: "Ask for access; prints the request ID, then waits until it is approved, denied or expired",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(principals) == 0 {
				return errors.New("--principal is required: the user names you need (e.g. --principal root)")
			}
			if ttl == "" {
				return errors.New("--ttl is required: how long you need the access once approved (e.g. --ttl 30m)")
			}
			if strings.TrimSpace(reason) == "" {
				return errors.New("--reason is required: why, with the ticket (e.g. --reason \"OPS-1234 disk full\")")
			}
			c, token, err := f.client(cmd.Context())
			if err != nil {
				return err
			}
			r, err := c.CreateRequest(cmd.Context(), token, client.NewAccessRequest{Principals: principals, TTL: ttl, Reason: reason,
				BreakGlass: breakGlass})
			if err != nil {
				return requestError(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), r.ID)
			if r.BreakGlass {
				fmt.Fprintf(cmd.ErrOrStderr(), "BREAK-GLASS access %s granted: %s until %s; it is recorded and must be reviewed (sshca request review %s)\nget a certificate: sshca login --request %s\n",
					r.ID, strings.Join(r.Principals, ","), localTime(r.NotAfter), r.ID, r.ID)
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "access request %s: %s for %s, needs %d approval(s); expires unless decided by %s\n",
				r.ID, strings.Join(r.Principals, ","), time.Duration(r.TTLSeconds)*time.Second, r.ApprovalsRequired, localTime(r.PendingUntil))
			if noWait {
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "approvers run: sshca request approve %s\n", r.ID)
			return waitForDecision(cmd.Context(), cmd.ErrOrStderr(), c, token, r, wait)
		},
	}
	f.register(cmd)
	cmd.Flags().StringSliceVar(&principals, "principal", nil, "a principal (user name) to ask for; repeat for more")
	cmd.Flags().StringVar(&ttl, "ttl", "", "how long the access lasts once approved, e.g. 30m")
	cmd.Flags().StringVar(&reason, "reason", "", "why, with the ticket the policy asks for")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "print the request ID and return at once")
	cmd.Flags().BoolVar(&breakGlass, "break-glass", false, "emergency access without approval, where the policy allows it: granted at once, reviewed afterwards")
	cmd.Flags().DurationVar(&wait.interval, "poll", 2*time.Second, "the least time between two asks that found no change (the server holds each ask up to 25s until the request changes)")
	return cmd
}

// waitForDecision waits for the request (long polls) until it is no longer pending, printing
// a progress line whenever its approvals change, and fails unless it ends approved.
func waitForDecision(ctx context.Context, msg io.Writer, c *client.Client, token string, r client.AccessRequest, w requestWait) error {
	after, now, longPoll := w.after, w.now, w.longPoll
	if after == nil {
		after = time.After
	}
	if now == nil {
		now = time.Now
	}
	if longPoll <= 0 {
		longPoll = client.RequestWait
	}
	var asked time.Time // when the last answer was asked for (zero: none yet)
	// backoff is the pause the server's last refusal asked for (its Retry-After).
	var backoff time.Duration
	last := ""
	for {
		line := fmt.Sprintf("waiting for approval: %d of %d", len(r.Approvals), r.ApprovalsRequired)
		if n := len(r.Approvals); n > 0 {
			line += " (" + approverNames(r.Approvals) + ")"
		}
		if line != last && r.State == "pending" {
			fmt.Fprintln(msg, line)
			last = line
		}
		switch r.State {
		case "approved":
			fmt.Fprintf(msg, "approved by %s; access until %s\nget a certificate: sshca login --request %s\n",
				approverNames(r.Approvals), localTime(r.NotAfter), r.ID)
			return nil
		case "pending":
		case "denied":
			return fmt.Errorf("access request %s was denied by %s: %s", r.ID, r.DecidedBy, r.DecisionReason)
		default:
			return fmt.Errorf("access request %s is %s; create a new one if you still need access", r.ID, r.State)
		}
		if !asked.IsZero() {
			if rest := max(w.interval-now().Sub(asked), backoff); rest > 0 {
				select {
				case <-ctx.Done():
					return fmt.Errorf("stopped waiting; the request stays pending: sshca request show %s", r.ID)
				case <-after(rest):
				}
			}
		}
		backoff = 0
		asked = now()
		next, err := c.WaitRequest(ctx, token, r.ID, longPoll, r)
		if ctx.Err() != nil {
			return fmt.Errorf("stopped waiting; the request stays pending: sshca request show %s", r.ID)
		}
		if err != nil {
			var e *client.Error
			if errors.As(err, &e) && (e.Status == 503 || e.Status == 429) {
				// A passing outage, or a replica holding as many waits as it may: keep
				// waiting, no sooner than it asked (at most a minute).
				if secs, err := strconv.ParseUint(e.RetryAfter, 10, 16); err == nil {
					backoff = min(time.Duration(secs)*time.Second, time.Minute)
				}
				continue
			}
			return requestError(err)
		}
		if next.WaitTag() != r.WaitTag() {
			asked = time.Time{} // a change: ask again at once
		}
		r = next
	}
}

func approverNames(as []client.Approval) string {
	names := make([]string, len(as))
	for i, a := range as {
		names[i] = a.ApproverName
	}
	return strings.Join(names, ", ")
}

func localTime(rfc string) string {
	t, err := time.Parse(time.RFC3339, rfc)
	if err != nil {
		return rfc
	}
	return t.Local().Format("2006-01-02 15:04:05 MST")
}

func newRequestListCommand() *cobra.Command {
	var f requestFlags
	var q client.RequestQuery
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--pending] [--mine] [--json] [--page-size N]",
		Short: "List your access requests and those you may decide",
		Long: `List your access requests and those you may decide (GET /v1/requests).

Requests are read --page-size at a time (each page is one request to the server); past a few
pages a progress line goes to stderr. A request decided while the list is read is shown once,
as it is after the decision.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if q.Limit < 1 || q.Limit > client.MaxPageLimit {
				return fmt.Errorf("--page-size %d: give 1 to %d requests per request to the server", q.Limit, client.MaxPageLimit)
			}
			c, token, err := f.client(cmd.Context())
			if err != nil {
				return err
			}
			q.OnPage = func(pages, requests int) {
				if pages >= progressAfterPages {
					fmt.Fprintf(cmd.ErrOrStderr(), "sshca: %d requests in %d pages so far\n", requests, pages)
				}
			}
			rs, err := c.RequestsPaged(cmd.Context(), token, q)
			if err != nil {
				return requestError(err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), rs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tREQUESTER\tPRINCIPALS\tTTL\tAPPROVALS\tREASON\tNOTE")
			for _, r := range rs {
				note := ""
				if r.BreakGlass {
					note = "break-glass, review missing"
					if r.ReviewedBy != "" {
						note = "break-glass, reviewed"
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", r.ID, r.State, oneLine(r.RequesterName, 80), strings.Join(r.Principals, ","),
					time.Duration(r.TTLSeconds)*time.Second, len(r.Approvals), r.ApprovalsRequired, oneLine(r.Reason, 60), note)
			}
			return tw.Flush()
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&q.Pending, "pending", false, "only requests waiting for a decision")
	cmd.Flags().BoolVar(&q.Mine, "mine", false, "only your own requests")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&q.Limit, "page-size", client.DefaultPageLimit, fmt.Sprintf("requests per request to the server, 1 to %d", client.MaxPageLimit))
	return cmd
}

func newRequestShowCommand() *cobra.Command {
	var f requestFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show ID [--json]",
		Short: "Show an access request: content, state, approvals, certificates",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, token, err := f.client(cmd.Context())
			if err != nil {
				return err
			}
			r, err := c.Request(cmd.Context(), token, args[0])
			if err != nil {
				return requestError(err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), r)
			}
			printRequest(cmd.OutOrStdout(), r)
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printRequest shows a request as an approver needs to see it before deciding. Text from the
// requester is shown on one line with control characters escaped, so that it cannot pose as
// another field.
func printRequest(w io.Writer, r client.AccessRequest) {
	fmt.Fprintf(w, "request     %s (%s)\n", r.ID, r.State)
	fmt.Fprintf(w, "requester   %s (%s)\n", oneLine(r.RequesterName, 200), oneLine(r.Requester, 300))
	fmt.Fprintf(w, "principals  %s\n", strings.Join(r.Principals, ", "))
	fmt.Fprintf(w, "ttl         %s once approved\n", time.Duration(r.TTLSeconds)*time.Second)
	fmt.Fprintf(w, "reason      %s\n", oneLine(r.Reason, 1024))
	if r.Ticket != "" {
		fmt.Fprintf(w, "ticket      %s\n", r.Ticket)
	}
	fmt.Fprintf(w, "created     %s; pending until %s\n", localTime(r.CreatedAt), localTime(r.PendingUntil))
	fmt.Fprintf(w, "approvals   %d of %d\n", len(r.Approvals), r.ApprovalsRequired)
	for _, a := range r.Approvals {
		fmt.Fprintf(w, "  %s at %s: %s\n", oneLine(a.ApproverName, 200), localTime(a.At), oneLine(a.Reason, 200))
	}
	if r.DecidedBy != "" {
		fmt.Fprintf(w, "decided     %s by %s: %s\n", localTime(r.DecidedAt), oneLine(r.DecidedBy, 300), oneLine(r.DecisionReason, 200))
	}
	if r.NotAfter != "" {
		fmt.Fprintf(w, "access until %s\n", localTime(r.NotAfter))
	}
	if r.BreakGlass {
		review := "MISSING (sshca request review " + r.ID + ")"
		if r.ReviewedBy != "" {
			review = fmt.Sprintf("%s by %s: %s", localTime(r.ReviewedAt), oneLine(r.ReviewedBy, 300), oneLine(r.ReviewReason, 200))
		}
		fmt.Fprintf(w, "break-glass review %s\n", review)
	}
	if len(r.Serials) > 0 {
		fmt.Fprintf(w, "certificates %s\n", strings.Join(r.Serials, ", "))
	}
	fmt.Fprintf(w, "content     %s\n", r.Hash())
}

// oneLine quotes what a requester or approver wrote when it holds anything but printable
// characters, and cuts it to n bytes.
func oneLine(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "…"
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0) {
			return fmt.Sprintf("%q", s)
		}
	}
	return s
}

func newRequestDecideCommand(op string) *cobra.Command {
	var f requestFlags
	var reason string
	short := map[string]string{
		"approve": "Approve an access request (shows it first; the approval counts only for what was shown)",
		"deny":    "Deny an access request, with a reason",
		"cancel":  "End an access request: your own (cancel), or another's as an administrator (revoke); its certificates are revoked",
		"review":  "Review a break-glass access afterwards (an approver; never its requester)",
	}[op]
	cmd := &cobra.Command{
		Use:   op + " ID [--reason TEXT]",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if op == "deny" && strings.TrimSpace(reason) == "" {
				return errors.New("--reason is required to deny: say why")
			}
			c, token, err := f.client(cmd.Context())
			if err != nil {
				return err
			}
			ctx, id := cmd.Context(), args[0]
			var r client.AccessRequest
			switch op {
			case "approve":
				// The approval names the hash of the content shown here, computed here: a
				// request that is not what was shown is not approved.
				shown, err := c.Request(ctx, token, id)
				if err != nil {
					return requestError(err)
				}
				printRequest(cmd.OutOrStdout(), shown)
				r, err = c.ApproveRequest(ctx, token, id, client.AccessDecision{ContentHash: shown.Hash(), Reason: reason})
				if err != nil {
					return requestError(err)
				}
			case "deny":
				r, err = c.DenyRequest(ctx, token, id, client.AccessDecision{Reason: reason})
			case "cancel":
				r, err = c.CancelRequest(ctx, token, id, client.AccessDecision{Reason: reason})
			case "review":
				r, err = c.ReviewRequest(ctx, token, id, client.AccessDecision{Reason: reason})
			}
			if err != nil {
				return requestError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "access request %s is %s (%d of %d approvals)\n", r.ID, r.State, len(r.Approvals), r.ApprovalsRequired)
			if op == "review" {
				fmt.Fprintf(cmd.OutOrStdout(), "break-glass access reviewed by %s\n", r.ReviewedBy)
			}
			if len(r.Serials) > 0 && op == "cancel" {
				fmt.Fprintf(cmd.OutOrStdout(), "revoked its certificates %s\n", strings.Join(r.Serials, ", "))
			}
			return nil
		},
	}
	f.register(cmd)
	help := "why (recorded)"
	if op == "deny" {
		help = "why (required, recorded, shown to the requester)"
	}
	cmd.Flags().StringVar(&reason, "reason", "", help)
	return cmd
}

// requestError is cliError, except that a 404 is the server's own answer about a request (it
// does not exist, or is not one the caller may see): its message says it all.
func requestError(err error) error {
	var e *client.Error
	if errors.As(err, &e) && e.Status == 404 && strings.Contains(e.Error(), "access request") {
		return err
	}
	return cliError(err)
}
