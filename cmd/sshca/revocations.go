package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/client"
)

func newRevocationsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "revocations",
		Short: "What is revoked under the active CA keys",
	}
	cmd.AddCommand(newRevocationsListCommand())
	return cmd
}

func newRevocationsListCommand() *cobra.Command {
	var f requestFlags
	var pageSize int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--json] [--page-size N]",
		Short: "List what is revoked under the active user and host CA keys (policy kind read: admins and auditors)",
		Long: `List what is revoked under the active user and host CA keys (GET /v1/revocations): serials
and key IDs until their certificate expires, banned public keys until an administrator lifts
them. Each scope is listed soonest to expire first, bans last.

Entries are read --page-size at a time (each page is one request, and one audited read);
past a few pages a progress line goes to stderr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pageSize < 1 || pageSize > client.MaxPageLimit {
				return fmt.Errorf("--page-size %d: give 1 to %d entries per request", pageSize, client.MaxPageLimit)
			}
			c, token, err := f.client(cmd.Context())
			if err != nil {
				return err
			}
			revs, err := c.RevocationsPaged(cmd.Context(), token, pageSize, func(pages, entries int) {
				if pages >= progressAfterPages {
					fmt.Fprintf(cmd.ErrOrStderr(), "sshca: %d entries in %d pages so far\n", entries, pages)
				}
			})
			if err != nil {
				return cliError(err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), revs)
			}
			return printRevocations(cmd.OutOrStdout(), revs)
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (the API's answer, every page's entries in one)")
	cmd.Flags().IntVar(&pageSize, "page-size", client.DefaultPageLimit, fmt.Sprintf("entries per request, 1 to %d", client.MaxPageLimit))
	return cmd
}

// printRevocations writes both scopes' entries as a table. A key ID comes from an identity
// provider's claims, so oneLine keeps it on its line.
func printRevocations(w io.Writer, revs client.RevocationsResponse) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CA\tKIND\tVALUE\tUNTIL")
	for _, sc := range []struct {
		name  string
		scope client.RevocationScope
	}{{"user", revs.UserCA}, {"host", revs.HostCA}} {
		for _, e := range sc.scope.Entries {
			until := e.Expires
			if e.Permanent {
				until = "lifted"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", sc.name, e.Kind, oneLine(e.Value, 120), until)
		}
	}
	return tw.Flush()
}
