// Command sshca is the one binary of sshca: the signing service (`serve`), the development
// service with embedded defaults (`dev`), and the client commands. It is the only place that
// wires concrete parts together.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sshca:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "sshca",
		Short:         "Short-lived SSH certificates from an OIDC identity and an OPA policy",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Version makes cobra add --version, which prints what `sshca version` does.
		Version: versionLine(debug.ReadBuildInfo),
	}
	root.SetVersionTemplate("sshca {{.Version}}\n")
	var tlsFlags cliTLSFlags
	tlsFlags.register(root)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error { return tlsFlags.withHTTPClient(cmd) }
	root.AddCommand(newServeCommand(), newDevCommand(), newCertCommand(), newRevokeCommand(), newBastionCommand(), newPolicyCommand(), newLoginCommand(), newSSHConfigCommand(), newKeysCommand(), newAuditCommand(), newStoreCommand(), newBenchCommand(), newVersionCommand(), newRequestCommand(), newDiscoverCommand(), newSessionsCommand(), newCertsCommand(), newRevocationsCommand())
	return root
}
