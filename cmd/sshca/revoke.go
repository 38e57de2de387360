package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/krl"
)

func newRevokeCommand() *cobra.Command {
	var server, tokenEnv, tokenFile, serial, keyID, identity, publicKeyFile, reason string
	var allMatches, lift bool
	cmd := &cobra.Command{
		Use:   "revoke --serial N | --key-id ID | --identity X | --public-key FILE [--lift] --reason TEXT",
		Short: "Revoke certificates; bastions running the agent refuse them within about a second",
		Long: `Revoke certificates; bastions running the agent refuse them within about a second.

--public-key bans a key until an administrator lifts the ban with --public-key FILE --lift
(audited, with its reason).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server == "" {
				return errors.New("--server is required (or set SSHCA_SERVER)")
			}
			if reason == "" {
				return errors.New("--reason is required: say why (it is recorded)")
			}
			if allMatches && identity == "" {
				return errors.New("--all-matches goes with --identity")
			}
			if lift {
				if publicKeyFile == "" || serial != "" || keyID != "" || identity != "" {
					return errors.New("--lift goes with --public-key only: it lifts a key's ban")
				}
				return liftBan(cmd, server, tokenEnv, tokenFile, publicKeyFile, reason)
			}
			req := client.RevokeRequest{Serial: serial, KeyID: keyID, Identity: identity, AllMatches: allMatches, Reason: reason}
			n := 0
			for _, v := range []string{serial, keyID, identity} {
				if v != "" {
					n++
				}
			}
			if publicKeyFile != "" {
				b, err := os.ReadFile(publicKeyFile)
				if err != nil {
					return fmt.Errorf("read public key: %w", err)
				}
				req.PublicKey = strings.TrimSpace(string(b))
				n++
			}
			if n != 1 {
				return errors.New("name exactly one of --serial, --key-id, --identity or --public-key")
			}
			token, err := readToken(tokenEnv, tokenFile)
			if err != nil {
				return err
			}
			c := apiClient(cmd.Context(), server)
			reply, err := c.Revoke(cmd.Context(), token, req)
			if err != nil {
				var e *client.Error
				if errors.As(err, &e) && e.Status == http.StatusConflict && identity != "" {
					return fmt.Errorf("%w\nname one identity as --identity 'issuer|subject', or revoke every one with --all-matches", cliError(err))
				}
				return cliError(err)
			}
			for _, m := range reply.Matches {
				fmt.Fprintf(cmd.OutOrStdout(), "identity %s\n", m)
			}
			if err := printRevoked(cmd.OutOrStdout(), reply.Revoked, reply.BlockedUntil); err != nil {
				return err
			}
			return printKRLVersions(cmd.Context(), cmd.OutOrStdout(), c, reply)
		},
	}
	cmd.Flags().StringVar(&server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL (env SSHCA_SERVER)")
	cmd.Flags().StringVar(&tokenEnv, "token-env", "SSHCA_TOKEN", "environment variable holding the bearer token")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token")
	cmd.Flags().StringVar(&serial, "serial", "", "certificate serial (decimal)")
	cmd.Flags().StringVar(&keyID, "key-id", "", "certificate key ID, e.g. alice@example.com#123")
	cmd.Flags().StringVar(&identity, "identity", "", "every live certificate of this identity: a verified e-mail, a username or 'issuer|subject'; blocks new ones")
	cmd.Flags().BoolVar(&allMatches, "all-matches", false, "with --identity: revoke every identity the e-mail or username names")
	cmd.Flags().StringVar(&publicKeyFile, "public-key", "", "file with a public key (or certificate): every certificate for the key")
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	cmd.Flags().BoolVar(&lift, "lift", false, "with --public-key: lift the key's ban (new certificates for it, out of the KRL)")
	return cmd
}

func printRevoked(w io.Writer, revoked []client.RevocationEntry, blockedUntil string) error {
	if len(revoked) == 0 {
		fmt.Fprintln(w, "no live certificate to revoke")
	}
	for _, e := range revoked {
		until := e.Expires
		if e.Permanent {
			until = "lifted (sshca revoke --public-key FILE --lift)"
		}
		fmt.Fprintf(w, "revoked %s %s (kept in the KRL until %s)\n", strings.ReplaceAll(e.Kind, "_", " "), e.Value, until)
	}
	if blockedUntil != "" {
		fmt.Fprintf(w, "new certificates refused until %s\n", blockedUntil)
	}
	return nil
}

// printKRLVersions says which KRLs now carry what was revoked, and the version to look for:
// the user KRL's is the krl_version a bastion's agent reports (its /healthz) once it enforces
// the revocation; the host KRL's that of the file ssh's RevokedHostKeys reads (sshca login keeps
// it). The revocation's own answer has no such number: a scope's version counts the changes of
// one CA key, while a KRL covers every CA key of its kind (a retired key's revocations, a host
// CA's), so the version is read from the KRL the server publishes right after. Both only grow,
// so a later version carries this revocation too.
func printKRLVersions(ctx context.Context, w io.Writer, c *client.Client, reply client.RevokeResponse) error {
	user, host := false, false
	for _, e := range reply.Revoked {
		if e.Kind == string(ca.RevokedKey) { // banned under both CAs
			user, host = true, true
		}
	}
	for _, cert := range reply.Certificates {
		switch ca.CertKind(cert.Kind) {
		case ca.UserCert:
			user = true
		case ca.HostCert:
			host = true
		}
	}
	if user {
		k, err := c.KRL(ctx, "")
		if err != nil {
			return fmt.Errorf("revoked, but the KRL cannot be read to tell its version: %w", cliError(err))
		}
		v, err := krlVersion(k.Data)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "user KRL version %d: bastions enforce this once their agent reports krl_version %d or more\n", v, v)
	}
	if host {
		b, err := c.HostKRL(ctx)
		if err != nil {
			return fmt.Errorf("revoked, but the host KRL cannot be read to tell its version: %w", cliError(err))
		}
		v, err := krlVersion(b)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "host KRL version %d: ssh clients refuse the host once their RevokedHostKeys file (GET /v1/krl/host, kept by sshca login) has version %d or more\n", v, v)
	}
	return nil
}

func krlVersion(b []byte) (uint64, error) {
	k, err := krl.Parse(b)
	if err != nil {
		return 0, fmt.Errorf("revoked, but the server's KRL does not parse: %w", err)
	}
	return k.Version, nil
}

// liftBan lifts the ban of the public key in file (POST /v1/revocations/lift).
func liftBan(cmd *cobra.Command, server, tokenEnv, tokenFile, file, reason string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read public key: %w", err)
	}
	token, err := readToken(tokenEnv, tokenFile)
	if err != nil {
		return err
	}
	reply, err := apiClient(cmd.Context(), server).Unrevoke(cmd.Context(), token, client.UnrevokeRequest{PublicKey: strings.TrimSpace(string(b)), Reason: reason})
	if err != nil {
		return cliError(err)
	}
	if !reply.Lifted {
		fmt.Fprintln(cmd.OutOrStdout(), "the key was not banned: nothing changed")
		return nil
	}
	fmt.Fprintln(cmd.OutOrStdout(), "ban lifted: new certificates may be issued for the key; bastions drop it from their KRL")
	// Lifted from the user and the host KRLs alike.
	return printKRLVersions(cmd.Context(), cmd.OutOrStdout(), apiClient(cmd.Context(), server), client.RevokeResponse{Revoked: []client.RevocationEntry{{Kind: string(ca.RevokedKey)}}})
}
