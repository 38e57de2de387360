package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func newSSHConfigCommand() *cobra.Command {
	var server, hosts string
	cmd := &cobra.Command{
		Use:   "ssh-config --server URL [--hosts PATTERN]",
		Short: "Print the ~/.ssh/config and known_hosts lines that make plain `ssh host` use sshca",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server == "" {
				return errors.New("--server is required (or set SSHCA_SERVER)")
			}
			resp, err := http.Get(strings.TrimRight(server, "/") + "/v1/ca/known_hosts")
			if err != nil {
				return fmt.Errorf("cannot reach the sshca server at %s (%v)", server, err)
			}
			defer resp.Body.Close()
			kh, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if err != nil || resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET /v1/ca/known_hosts: HTTP %d", resp.StatusCode)
			}
			u, _ := url.Parse(server)
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "# ~/.ssh/config: use the sshca key and certificate (sshca login keeps them current;\n")
			fmt.Fprintf(w, "# ssh-agent holds them for exactly the certificate's lifetime).\n")
			fmt.Fprintf(w, "Host %s\n", hosts)
			fmt.Fprintf(w, "    IdentityFile ~/.ssh/sshca/id_ed25519\n")
			fmt.Fprintf(w, "    CertificateFile ~/.ssh/sshca/id_ed25519-cert.pub\n")
			fmt.Fprintf(w, "    StrictHostKeyChecking yes\n\n")
			fmt.Fprintf(w, "# ~/.ssh/known_hosts: trust host certificates from the sshca host CA at %s\n", u.Host)
			_, err = w.Write(kh)
			return err
		},
	}
	cmd.Flags().StringVar(&server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL (env SSHCA_SERVER)")
	cmd.Flags().StringVar(&hosts, "hosts", "*", "ssh host pattern the stanza applies to")
	return cmd
}
