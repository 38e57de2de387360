package main

import (
	"context"
	"crypto/rand"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/bastion"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

func newDiscoverCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "discover",
		Short: "Find the long-lived keys that let people in without certificates",
		Long: `Find the long-lived keys that let people in without certificates.

"sshca discover send" runs on a host: it lists every key of the authorized_keys files sshd's
effective AuthorizedKeysFile names for each account of /etc/passwd, sshd's
AuthorizedKeysCommand (never run) and whether passwords are on, and reports them to the CA
with a proof signed by the host key and carrying its host certificate. "sshca discover
report" lists what every host reported (admins).`,
	}
	cmd.AddCommand(newDiscoverSendCommand(), newDiscoverReportCommand(), newDiscoverDisableCommand(), newDiscoverRestoreCommand(), newDiscoverApplyCommand())
	return cmd
}

type discoverSendFlags struct {
	server, hostKey, hostCert, host, sshdConfig, sshdLog, passwd, stateDir string
	print                                                                  bool
}

func newDiscoverSendCommand() *cobra.Command {
	var f discoverSendFlags
	cmd := &cobra.Command{
		Use:   "send --server URL --host-key FILE --host-cert FILE [--host H]",
		Short: "Inventory this host's long-lived keys and report them to the CA",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return discoverSend(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	cmd.Flags().StringVar(&f.server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL (env SSHCA_SERVER)")
	cmd.Flags().StringVar(&f.hostKey, "host-key", "/etc/ssh/ssh_host_ed25519_key", "the host's private key (signs the report)")
	cmd.Flags().StringVar(&f.hostCert, "host-cert", "", "the host certificate of that key (default: --host-key + -cert.pub)")
	cmd.Flags().StringVar(&f.host, "host", "", "the host name to report under, one of the certificate's (default: its first)")
	cmd.Flags().StringVar(&f.sshdConfig, "sshd-config", "/etc/ssh/sshd_config", "sshd_config, read through sshd -T")
	cmd.Flags().StringVar(&f.sshdLog, "sshd-log", "", "sshd's log (LogLevel VERBOSE), for when each key was last accepted")
	cmd.Flags().StringVar(&f.passwd, "passwd", "/etc/passwd", "the password database")
	cmd.Flags().BoolVar(&f.print, "print", false, "print the report (JSON) instead of sending it")
	cmd.Flags().StringVar(&f.stateDir, "state-dir", "/etc/ssh/sshca/discover", "where keys disabled on an admin's order leave their backup and marker")
	return cmd
}

// discoverSend inventories the host and reports it; when the CA answers with orders to
// disable keys, it comments them out (bastion.DisableKey) and reports again, so the CA sees
// them gone and ends the orders.
func discoverSend(ctx context.Context, out io.Writer, f discoverSendFlags) error {
	for round := 0; ; round++ {
		orders, rep, err := discoverSendOnce(ctx, out, f)
		if err != nil || len(orders) == 0 || f.print {
			return err
		}
		if round == 1 {
			return fmt.Errorf("the CA still orders %d keys disabled after they were; see %s", len(orders), f.stateDir)
		}
		done, err := bastion.ApplyDisableOrders(rep, orders, f.stateDir)
		for _, rec := range done {
			fmt.Fprintf(out, "disabled %s in %s (lines %v; backup %s)\n", rec.Fingerprint, rec.File, rec.Lines, rec.Backup)
		}
		if err != nil {
			return err
		}
	}
}

func discoverSendOnce(ctx context.Context, out io.Writer, f discoverSendFlags) ([]string, client.DiscoveryReport, error) {
	rep, err := bastion.Discovery{SSHD: bastion.SSHDEffective{Config: f.sshdConfig}, SSHDLog: f.sshdLog, Passwd: f.passwd}.Run(ctx)
	if err != nil {
		return nil, rep, err
	}
	if f.print {
		rep.Host = f.host
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return nil, rep, enc.Encode(rep)
	}
	if f.server == "" {
		return nil, rep, errors.New("--server is required (or set SSHCA_SERVER)")
	}
	b, err := os.ReadFile(f.hostKey)
	if err != nil {
		return nil, rep, fmt.Errorf("read host key: %w", err)
	}
	key, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, rep, fmt.Errorf("host key %s: %w", f.hostKey, err)
	}
	if f.hostCert == "" {
		f.hostCert = f.hostKey + "-cert.pub"
	}
	cert, err := readCert(f.hostCert)
	if err != nil {
		return nil, rep, err
	}
	host := f.host
	if host == "" {
		if len(cert.ValidPrincipals) == 0 {
			return nil, rep, fmt.Errorf("%s names no host; give --host", f.hostCert)
		}
		host = cert.ValidPrincipals[0]
	}
	rep.Host = host
	body, err := json.Marshal(rep)
	if err != nil {
		return nil, rep, err
	}
	var id [12]byte
	_, _ = rand.Read(id[:])
	proof, err := ca.SignDiscoverProof(key, cert, host, body, time.Now(), hex.EncodeToString(id[:]))
	if err != nil {
		return nil, rep, err
	}
	accepted, err := apiClient(ctx, f.server).ReportDiscovery(ctx, proof, body)
	if err != nil {
		return nil, rep, cliError(err)
	}
	fmt.Fprintf(out, "reported %d keys of %d accounts (%d files skipped) for %s\n", len(rep.Keys), rep.Accounts, len(rep.Skipped), host)
	return accepted.Disable, rep, nil
}

type discoverReportFlags struct {
	server, tokenEnv, tokenFile, host, unusedFor, format string
	pageSize                                             int
}

func newDiscoverReportCommand() *cobra.Command {
	var f discoverReportFlags
	cmd := &cobra.Command{
		Use:   "report [--host H] [--unused-for 90d] [--format table|json|csv] [--page-size N]",
		Short: "List the long-lived keys every host reported, and which were used recently",
		Long: `List the long-lived keys every host reported: the account each opens, its
fingerprint, type, options and comment, the file and its time, and when sshd last accepted
it (from the host's sshd log; "never" when its log shows no login with it). --unused-for
keeps the keys not accepted within that long (e.g. 90d, 12h): the zombie credentials to
retire. Each host's password and keyboard-interactive authentication, AuthorizedKeysCommand
and files it could not read safely are listed after the keys (table), or in the JSON.

Hosts are read --page-size at a time, by host name (each page is one request to the server);
past a few pages a progress line goes to stderr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.server == "" {
				return errors.New("--server is required (or set SSHCA_SERVER)")
			}
			var unused time.Duration
			if f.unusedFor != "" {
				var err error
				if unused, err = parseDays(f.unusedFor); err != nil || unused <= 0 {
					return fmt.Errorf("--unused-for %q: want a positive duration such as 90d or 12h", f.unusedFor)
				}
			}
			if f.format != "table" && f.format != "json" && f.format != "csv" {
				return fmt.Errorf("--format %q: want table, json or csv", f.format)
			}
			if f.pageSize < 1 || f.pageSize > client.MaxPageLimit {
				return fmt.Errorf("--page-size %d: give 1 to %d hosts per request", f.pageSize, client.MaxPageLimit)
			}
			token, err := readToken(f.tokenEnv, f.tokenFile)
			if err != nil {
				return err
			}
			recs, err := apiClient(cmd.Context(), f.server).Discoveries(cmd.Context(), token, f.pageSize, func(pages, hosts int) {
				if pages >= progressAfterPages {
					fmt.Fprintf(cmd.ErrOrStderr(), "sshca: %d hosts in %d pages so far\n", hosts, pages)
				}
			})
			if err != nil {
				return cliError(err)
			}
			return printDiscoveries(cmd.OutOrStdout(), recs, f.host, unused, f.format, time.Now())
		},
	}
	cmd.Flags().StringVar(&f.server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL (env SSHCA_SERVER)")
	cmd.Flags().StringVar(&f.tokenEnv, "token-env", "SSHCA_TOKEN", "environment variable holding the bearer token")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token")
	cmd.Flags().StringVar(&f.host, "host", "", "only this host")
	cmd.Flags().StringVar(&f.unusedFor, "unused-for", "", "only keys not accepted for this long (90d, 12h)")
	cmd.Flags().StringVar(&f.format, "format", "table", "table, json or csv")
	cmd.Flags().IntVar(&f.pageSize, "page-size", client.DefaultPageLimit, fmt.Sprintf("hosts per request, 1 to %d", client.MaxPageLimit))
	return cmd
}

// parseDays is time.ParseDuration that also takes whole days ("90d").
func parseDays(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err := strconv.Atoi(n)
		if err != nil {
			return 0, err
		}
		return time.Duration(d) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// discoveredRow is one key of one host in the report's outputs.
type discoveredRow struct {
	Host     string    `json:"host"`
	Received time.Time `json:"received"`
	client.DiscoveredKey
}

func printDiscoveries(w io.Writer, recs []client.DiscoveryRecord, host string, unused time.Duration, format string, now time.Time) error {
	rows := []discoveredRow{}
	var kept []client.DiscoveryRecord
	for _, r := range recs {
		if host != "" && r.Host != host {
			continue
		}
		kept = append(kept, r)
		for _, k := range r.Report.Keys {
			if unused > 0 && k.LastAccepted != nil && now.Sub(*k.LastAccepted) < unused {
				continue
			}
			rows = append(rows, discoveredRow{Host: r.Host, Received: r.Received, DiscoveredKey: k})
		}
	}
	last := func(k client.DiscoveredKey) string {
		if k.LastAccepted == nil {
			return "never"
		}
		return k.LastAccepted.UTC().Format(time.RFC3339)
	}
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Keys  []discoveredRow          `json:"keys"`
			Hosts []client.DiscoveryRecord `json:"hosts"`
		}{rows, kept})
	case "csv":
		cw := csv.NewWriter(w)
		_ = cw.Write([]string{"host", "account", "fingerprint", "type", "bits", "options", "comment", "file", "line", "file_mtime", "last_accepted", "reported"})
		for _, r := range rows {
			_ = cw.Write([]string{r.Host, r.Account, r.Fingerprint, r.Type, strconv.Itoa(r.Bits), strings.Join(r.Options, ","),
				r.Comment, r.File, strconv.Itoa(r.Line), r.FileModTime.UTC().Format(time.RFC3339), last(r.DiscoveredKey), r.Received.UTC().Format(time.RFC3339)})
		}
		cw.Flush()
		return cw.Error()
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tACCOUNT\tFINGERPRINT\tTYPE\tOPTIONS\tCOMMENT\tFILE\tLAST ACCEPTED")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s %d\t%s\t%s\t%s:%d\t%s\n", r.Host, r.Account, r.Fingerprint, r.Type, r.Bits,
			strings.Join(r.Options, ","), r.Comment, r.File, r.Line, last(r.DiscoveredKey))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range kept {
		rep := r.Report
		var notes []string
		if rep.PasswordAuthentication {
			notes = append(notes, "password authentication on")
		}
		if rep.KbdInteractiveAuthentication {
			notes = append(notes, "keyboard-interactive authentication on")
		}
		if rep.AuthorizedKeysCommand != "" {
			notes = append(notes, fmt.Sprintf("AuthorizedKeysCommand %q as %s", rep.AuthorizedKeysCommand, rep.AuthorizedKeysCommandUser))
		}
		if rep.AccountsTruncated {
			notes = append(notes, fmt.Sprintf("only the first %d accounts inspected", rep.Accounts))
		}
		for _, s := range rep.Skipped {
			notes = append(notes, fmt.Sprintf("not read: %s (%s): %s", s.File, s.Account, s.Reason))
		}
		for _, n := range notes {
			fmt.Fprintf(w, "%s: %s\n", r.Host, n)
		}
	}
	return nil
}

func newDiscoverDisableCommand() *cobra.Command {
	var server, tokenEnv, tokenFile string
	var req client.DiscoveryDisableRequest
	cmd := &cobra.Command{
		Use:   "disable --host H --fingerprint SHA256:... --reason TEXT",
		Short: "Order a host to comment a long-lived key out of authorized_keys (admins, audited)",
		Long: `Order a host to comment a long-lived key out of the authorized_keys files its last
report lists it in (policy kind admin, audited with the reason). The host applies the order
with its next "sshca discover send", as each file's owner, keeping owner and mode, with a
backup and a marker in its --state-dir. The file's owner can add the key back, and the next
report then shows it again. Restoring is "sshca discover restore" on the host: the remote
channel only takes access away.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server == "" {
				return errors.New("--server is required (or set SSHCA_SERVER)")
			}
			token, err := readToken(tokenEnv, tokenFile)
			if err != nil {
				return err
			}
			if err := apiClient(cmd.Context(), server).DisableDiscovered(cmd.Context(), token, req); err != nil {
				return cliError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ordered: %s disables %s with its next report\n", req.Host, req.Fingerprint)
			return nil
		},
	}
	cmd.Flags().StringVar(&server, "server", os.Getenv("SSHCA_SERVER"), "sshca server URL (env SSHCA_SERVER)")
	cmd.Flags().StringVar(&tokenEnv, "token-env", "SSHCA_TOKEN", "environment variable holding the bearer token")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token")
	cmd.Flags().StringVar(&req.Host, "host", "", "the host, as sshca discover report names it")
	cmd.Flags().StringVar(&req.Fingerprint, "fingerprint", "", "the key's SHA256 fingerprint, as sshca discover report prints it")
	cmd.Flags().StringVar(&req.Reason, "reason", "", "why (recorded)")
	return cmd
}

func newDiscoverRestoreCommand() *cobra.Command {
	var file, fp string
	cmd := &cobra.Command{
		Use:   "restore --file PATH --fingerprint SHA256:...",
		Short: "Put back a key that sshca discover disabled (on the host only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" || fp == "" {
				return errors.New("--file and --fingerprint are required")
			}
			n, err := bastion.RestoreKey(file, fp)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %d lines of %s in %s\n", n, fp, file)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "the authorized_keys file")
	cmd.Flags().StringVar(&fp, "fingerprint", "", "the key's SHA256 fingerprint")
	return cmd
}
