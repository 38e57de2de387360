package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/keyring"
	"github.com/sshca/sshca/kms"
)

// keysAdmin authorizes each key operation with the policy (kind "admin") and carries it out.
type keysAdmin struct {
	authority *ca.Authority
	manager   *keyring.Manager
}

func (k keysAdmin) Keys(ctx context.Context, token string) (ca.Keyring, error) {
	if err := k.authority.Authorize(ctx, token, ca.ActionAdmin, "list CA keys"); err != nil {
		return ca.Keyring{}, err
	}
	r, err := k.manager.Store.Keyring(ctx)
	var e *ca.Error
	if err != nil && !errors.As(err, &e) {
		err = ca.Unavailable("keyring store unavailable", err)
	}
	return shownKeyring(r), err
}

// do authorizes a key operation and carries it out; an operation that fails once allowed is
// settled in the audit log with its real outcome (ca.Authority.AuthorizeThen).
func (k keysAdmin) do(ctx context.Context, token, target string, op func(context.Context) (ca.CAKey, error)) (ca.CAKey, error) {
	var key ca.CAKey
	err := k.authority.AuthorizeThen(ctx, token, ca.ActionAdmin, target, func(ctx context.Context) error {
		var err error
		key, err = op(ctx)
		return err
	})
	return shownKey(key, err)
}

func (k keysAdmin) GenerateKey(ctx context.Context, token string, kind ca.CertKind, keyType string) (ca.CAKey, error) {
	return k.do(ctx, token, "generate "+string(kind)+" CA key", func(ctx context.Context) (ca.CAKey, error) {
		if keyType == "" {
			keyType = string(kms.ECDSAP256)
			if !strings.HasPrefix(k.manager.KMS, "pkcs11:") {
				keyType = string(kms.Ed25519)
			}
		}
		typ, err := kms.ParseKeyType(keyType)
		if err != nil {
			return ca.CAKey{}, ca.Invalid("%v", err)
		}
		return k.manager.Generate(ctx, kind, typ)
	})
}

func (k keysAdmin) PromoteKey(ctx context.Context, token string, kind ca.CertKind, force bool) (ca.CAKey, error) {
	return k.do(ctx, token, "promote "+string(kind)+" CA key", func(ctx context.Context) (ca.CAKey, error) {
		return k.manager.Promote(ctx, kind, force)
	})
}

func (k keysAdmin) RetireKey(ctx context.Context, token, fp string, force bool) (ca.CAKey, error) {
	return k.do(ctx, token, "retire CA key "+fp, func(ctx context.Context) (ca.CAKey, error) {
		return k.manager.Retire(ctx, fp, force)
	})
}

func (k keysAdmin) CompromisedKey(ctx context.Context, token, fp string) (ca.CAKey, error) {
	return k.do(ctx, token, "mark CA key "+fp+" compromised", func(ctx context.Context) (ca.CAKey, error) {
		return k.manager.Compromised(ctx, fp)
	})
}

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
