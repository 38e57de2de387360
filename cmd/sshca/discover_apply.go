package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/bastion"
)

type discoverApplyFlags struct {
	orders, stateDir, sshdConfig, passwd string
}

func newDiscoverApplyCommand() *cobra.Command {
	var f discoverApplyFlags
	cmd := &cobra.Command{
		Use:   "apply [--orders FILE]",
		Short: "Disable the keys the CA ordered, from the file the agent wrote (run by sshca-discover-disable.service)",
		Long: `Disable the keys the CA ordered, from the file the bastion agent (--discover) writes
when a report is answered with orders. It runs discovery itself and comments each ordered
fingerprint out of every authorized_keys file that lists it, as that file's owner (so it
needs CAP_SETUID and CAP_SETGID, and write access to home directories), with a backup and a
marker in --state-dir. The file names fingerprints only: whoever can write it can at most take
keys away. A missing file is nothing to do; applying the same orders again changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return discoverApply(cmd, cmd.OutOrStdout(), f)
		},
	}
	cmd.Flags().StringVar(&f.orders, "orders", DefaultDiscoverOrders, "the orders file the agent writes (--discover-orders)")
	cmd.Flags().StringVar(&f.stateDir, "state-dir", "/etc/ssh/sshca/discover", "where each disabled key leaves its backup and marker")
	cmd.Flags().StringVar(&f.sshdConfig, "sshd-config", "/etc/ssh/sshd_config", "sshd_config, read through sshd -T")
	cmd.Flags().StringVar(&f.passwd, "passwd", "/etc/passwd", "the password database")
	return cmd
}

func discoverApply(cmd *cobra.Command, out io.Writer, f discoverApplyFlags) error {
	o, err := bastion.ReadDisableOrders(f.orders)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(out, "no orders (%s does not exist)\n", f.orders)
		return nil
	}
	if err != nil {
		return err
	}
	if len(o.Fingerprints) == 0 {
		fmt.Fprintln(out, "no keys ordered disabled")
		return nil
	}
	rep, err := bastion.Discovery{SSHD: bastion.SSHDEffective{Config: f.sshdConfig}, Passwd: f.passwd}.Run(cmd.Context())
	if err != nil {
		return err
	}
	done, err := bastion.ApplyDisableOrders(rep, o.Fingerprints, f.stateDir)
	for _, d := range done {
		fmt.Fprintf(out, "disabled %s in %s (lines %v; backup %s)\n", d.Fingerprint, d.File, d.Lines, d.Backup)
	}
	if err == nil && len(done) == 0 {
		fmt.Fprintf(out, "%d keys ordered disabled, none enabled in any authorized_keys file\n", len(o.Fingerprints))
	}
	return err
}
