package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

func newKeysCommand() *cobra.Command {
	var server, tokenEnv, kind, typ string
	var force bool
	cmd := &cobra.Command{Use: "keys", Short: "Rotate CA keys: list, generate, promote, retire, compromised"}
	cmd.PersistentFlags().StringVar(&server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL (env SSHCA_SERVER)")
	cmd.PersistentFlags().StringVar(&tokenEnv, "token-env", "SSHCA_TOKEN", "environment variable holding an admin's bearer token")
	call := func(cmd *cobra.Command, op string, req client.KeyRequest) error {
		if server == "" {
			return errors.New("--server is required (or set SSHCA_SERVER)")
		}
		token, err := readToken(tokenEnv, "")
		if err != nil {
			return err
		}
		c, ctx, w := apiClient(cmd.Context(), server), cmd.Context(), cmd.OutOrStdout()
		if op == "list" {
			ring, err := c.Keys(ctx, token)
			if err != nil {
				return cliError(err)
			}
			return printKeys(w, ring.Keys)
		}
		do := map[string]func(context.Context, string, client.KeyRequest) (ca.CAKey, error){
			"generate": c.GenerateKey, "promote": c.PromoteKey, "retire": c.RetireKey, "compromised": c.CompromisedKey,
		}[op]
		key, err := do(ctx, token, req)
		if err != nil {
			return cliError(err)
		}
		fmt.Fprintf(w, "%s: %s CA key %s is now %s\n", op, key.CA, key.Fingerprint, key.State)
		return printKeys(w, []ca.CAKey{key})
	}
	list := &cobra.Command{Use: "list", Short: "List the keyring", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return call(cmd, "list", client.KeyRequest{}) }}
	generate := &cobra.Command{Use: "generate --ca user|host [--type ed25519|ecdsa-p256|rsa-3072]", Short: "Create a key in the KMS and add it as next", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(cmd, "generate", client.KeyRequest{CA: kind, Type: typ})
		}}
	generate.Flags().StringVar(&typ, "type", "", "key type (default ed25519 on softkms, ecdsa-p256 on PKCS#11)")
	promote := &cobra.Command{Use: "promote --ca user|host", Short: "Make the next key active; the active one becomes retired", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(cmd, "promote", client.KeyRequest{CA: kind, Force: force})
		}}
	retire := &cobra.Command{Use: "retire FINGERPRINT", Short: "Withdraw a retired key from publication", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(cmd, "retire", client.KeyRequest{Fingerprint: args[0], Force: force})
		}}
	compromised := &cobra.Command{Use: "compromised FINGERPRINT", Short: "Emergency: withdraw a key and revoke everything it signed", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(cmd, "compromised", client.KeyRequest{Fingerprint: args[0]})
		}}
	for _, c := range []*cobra.Command{generate, promote} {
		c.Flags().StringVar(&kind, "ca", "", "user or host")
	}
	for _, c := range []*cobra.Command{promote, retire} {
		c.Flags().BoolVar(&force, "force", false, "skip the safety wait")
	}
	cmd.AddCommand(list, generate, promote, retire, compromised)
	return cmd
}

func printKeys(w io.Writer, keys []ca.CAKey) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CA\tSTATE\tFINGERPRINT\tALGORITHM\tCREATED\tPROMOTED\tRETIRE-AFTER")
	t := func(x time.Time) string {
		if x.IsZero() {
			return "-"
		}
		return x.UTC().Format(time.RFC3339)
	}
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.CA, k.State, k.Fingerprint, k.Algorithm, t(k.Created), t(k.Promoted), t(k.RetireAfter))
	}
	return tw.Flush()
}
