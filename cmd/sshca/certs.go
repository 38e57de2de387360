package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/client"
)

func newCertsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Who holds access now: the inventory of unexpired certificates",
	}
	cmd.AddCommand(newCertsListCommand())
	return cmd
}

func newCertsListCommand() *cobra.Command {
	var f requestFlags
	var q client.CertQuery
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--identity X] [--principal P] [--live] [--json]",
		Short: "List unexpired certificates, revoked ones flagged (policy kind read: admins and auditors)",
		Long: `List unexpired certificates, revoked ones flagged, by serial (GET /v1/certs).

--identity takes a verified e-mail, a username ("username:alice") or 'issuer|subject';
--principal keeps the certificates that name it (e.g. root); --live leaves out revoked ones,
so what remains is exactly who can log in now. The policy decides who may read (kind "read":
the shipped policy's admin_groups and auditor_groups), and every read is audited as such.

Certificates are listed soonest to expire first, read --page-size at a time (each page is one
request, and one audited read); past a few pages a progress line goes to stderr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if q.Limit < 1 || q.Limit > client.MaxPageLimit {
				return fmt.Errorf("--page-size %d: give 1 to %d certificates per request", q.Limit, client.MaxPageLimit)
			}
			c, token, err := f.client(cmd.Context())
			if err != nil {
				return err
			}
			q.OnPage = func(pages, certs int) {
				// A large inventory takes a while: say so, but not for the usual one page.
				if pages >= progressAfterPages {
					fmt.Fprintf(cmd.ErrOrStderr(), "sshca: %d certificates in %d pages so far\n", certs, pages)
				}
			}
			certs, err := c.Inventory(cmd.Context(), token, q)
			if err != nil {
				return cliError(err)
			}
			if asJSON {
				if certs == nil {
					certs = []client.Certificate{}
				}
				return printJSON(cmd.OutOrStdout(), certs)
			}
			return printCerts(cmd.OutOrStdout(), certs)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&q.Identity, "identity", "", "only this identity: a verified e-mail, username:NAME or 'issuer|subject'")
	cmd.Flags().StringVar(&q.Principal, "principal", "", "only certificates for this principal, e.g. root")
	cmd.Flags().BoolVar(&q.Live, "live", false, "only certificates that still grant access (not revoked)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (the API's certificates)")
	cmd.Flags().IntVar(&q.Limit, "page-size", client.DefaultPageLimit, fmt.Sprintf("certificates per request, 1 to %d", client.MaxPageLimit))
	return cmd
}

// progressAfterPages is the page from which `sshca certs list` reports its progress on stderr.
const progressAfterPages = 3

// printCerts writes the inventory as a table. Every field but the serial and times comes from
// an identity provider's claims or a requester's reason, so oneLine keeps each on its line.
func printCerts(w io.Writer, certs []client.Certificate) error {
	if len(certs) == 0 {
		fmt.Fprintln(w, "no certificate matches")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tIDENTITY\tPRINCIPALS\tVALID UNTIL\tTICKET\tREQUEST\tREVOKED")
	for _, c := range certs {
		revoked := "-"
		if c.Revoked != "" {
			revoked = "REVOKED (" + strings.ReplaceAll(c.Revoked, "_", " ") + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Serial, oneLine(c.Identity, 80), oneLine(strings.Join(c.Principals, ","), 80),
			c.ValidBefore, dash(oneLine(c.Ticket, 40)), dash(c.AccessRequest), revoked)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
