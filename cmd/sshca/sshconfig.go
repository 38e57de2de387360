package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/bodylimit"
)

func newSSHConfigCommand() *cobra.Command {
	var server, hosts, bastion string
	var write bool
	cmd := &cobra.Command{
		Use:   "ssh-config --server URL [--hosts PATTERN] [--write [--bastion HOST]]",
		Short: "Print, or install with --write, the ssh configuration that makes plain `ssh host` use sshca",
		Long: `Without --write: print the ~/.ssh/config and known_hosts lines.

With --write: install ~/.ssh/sshca.conf for the hosts --hosts names (required, not "*") and put
"Include ~/.ssh/sshca.conf" at the top of ~/.ssh/config (ssh keeps the first value it reads).
For those hosts ssh then uses the sshca key and certificate, checks host keys strictly against
~/.ssh/sshca/known_hosts (the @cert-authority and @revoked lines) and
~/.ssh/sshca/revoked_hosts.krl (RevokedHostKeys), jumps through --bastion if given, and runs
"sshca login --if-expiring --quiet" before connecting, which signs in only when the certificate
is about to expire and refreshes the KRL. Running it again rewrites sshca.conf and never adds a
second Include line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server == "" {
				return errors.New("--server is required (or set SSHCA_SERVER)")
			}
			server = strings.TrimRight(server, "/")
			kh, err := fetchKnownHosts(cmd, server)
			if err != nil {
				return err
			}
			if write {
				if hosts == "*" {
					return errors.New("--hosts: name the hosts sshca certifies, e.g. '*.corp.example.com' (with --write, \"*\" would make every ssh connection strict and sign in first)")
				}
				return writeSSHConfig(cmd, sshConfigSpec{server: server, hosts: hosts, bastion: bastion, knownHosts: kh})
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
	cmd.Flags().StringVar(&hosts, "hosts", "*", "ssh host patterns the configuration applies to, comma-separated (e.g. '*.corp.example.com,10.1.*'); --write needs one narrower than \"*\"")
	cmd.Flags().BoolVar(&write, "write", false, "install ~/.ssh/sshca.conf and include it at the top of ~/.ssh/config instead of printing")
	cmd.Flags().StringVar(&bastion, "bastion", "", "with --write: [user@]host[:port] to reach the hosts through (ProxyJump); the bastion itself is left out of the pattern")
	return cmd
}

func fetchKnownHosts(cmd *cobra.Command, server string) ([]byte, error) {
	resp, err := httpClientFrom(cmd.Context()).Get(server + "/v1/ca/known_hosts")
	if err != nil {
		return nil, fmt.Errorf("cannot reach the sshca server at %s (%v)", server, err)
	}
	defer resp.Body.Close()
	kh, err := bodylimit.ReadAll(resp, client.MaxAnswerBytes)
	if err != nil {
		return nil, fmt.Errorf("GET %s/v1/ca/known_hosts: %w", server, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/v1/ca/known_hosts: HTTP %d; check --server", server, resp.StatusCode)
	}
	return kh, nil
}

// sshConfigSpec is what `ssh-config --write` installs.
type sshConfigSpec struct {
	server, hosts, bastion string
	knownHosts             []byte
}

var (
	// hostPatternRE is one ssh host pattern: a name or address with * and ? wildcards; no
	// spaces, quotes or % (ssh would expand it as a token).
	hostPatternRE = regexp.MustCompile(`^[A-Za-z0-9.*?_:\[\]-]+$`)
	// bastionRE is ProxyJump's [user@]host[:port].
	bastionRE = regexp.MustCompile(`^(?:[A-Za-z0-9._-]+@)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$`)
	// shellSafeRE is what goes into the Match exec command unquoted by ssh: ssh would expand a %
	// token and the shell would read quotes.
	shellSafeRE = regexp.MustCompile(`^[A-Za-z0-9/._:@+=,-]+$`)
)

// writeSSHConfig installs ~/.ssh/sshca.conf, the known_hosts and host KRL it names, and the
// Include line at the top of ~/.ssh/config. Paths in the files are absolute: ssh expands ~
// from the passwd entry, which need not be $HOME.
func writeSSHConfig(cmd *cobra.Command, s sshConfigSpec) error {
	patterns := strings.Split(s.hosts, ",")
	for _, p := range patterns {
		if !hostPatternRE.MatchString(p) || strings.Trim(p, "*?") == "" {
			return fmt.Errorf("--hosts: %q is not an ssh host pattern narrower than \"*\" (letters, digits, . - _ : [ ] and the wildcards * ?), e.g. '*.corp.example.com'", p)
		}
	}
	hostLine := strings.Join(patterns, " ")
	if s.bastion != "" {
		m := bastionRE.FindStringSubmatch(s.bastion)
		if m == nil {
			return fmt.Errorf("--bastion: %q is not [user@]host[:port]", s.bastion)
		}
		hostLine += " !" + strings.Trim(m[1], "[]") // a jump through itself would loop
	}
	if !shellSafeRE.MatchString(s.server) {
		return fmt.Errorf("--server: %q has characters that ssh or the shell would expand (%%, quotes, spaces); use the plain URL", s.server)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("cannot find the sshca binary for the Match exec line: %w", err)
	}
	if !shellSafeRE.MatchString(self) {
		return fmt.Errorf("the sshca binary's path %q has characters ssh or the shell would expand; install sshca under a plain path", self)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return fmt.Errorf("no home directory for ~/.ssh: %w", err)
	}
	sshDir := filepath.Join(home, ".ssh")
	dir := filepath.Join(sshDir, "sshca")
	for _, d := range []string{sshDir, dir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	knownHosts := filepath.Join(dir, "known_hosts")
	if err := replaceFile(knownHosts, s.knownHosts, 0o600); err != nil {
		return err
	}
	// RevokedHostKeys refuses every host when its file is missing: install the KRL now.
	revoked := filepath.Join(dir, "revoked_hosts.krl")
	if _, _, err := refreshHostKRL(cmd.Context(), apiClient(cmd.Context(), s.server), revoked); err != nil {
		return fmt.Errorf("install the KRL of revoked hosts: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Written by `sshca ssh-config --write --server %s --hosts %s`; it rewrites this file.\n", s.server, s.hosts)
	// No %-token reaches the shell: the command names the server, never the host being
	// reached. ssh runs it before every connection to these hosts; it signs in only when the
	// certificate is about to expire, and refreshes the KRL of revoked hosts.
	fmt.Fprintf(&b, "Match host %s exec \"%s login --if-expiring --quiet --server %s\"\n", strings.Join(patterns, ","), self, s.server)
	fmt.Fprintf(&b, "Host %s\n", hostLine)
	fmt.Fprintf(&b, "    IdentityFile %s\n", filepath.Join(dir, "id_ed25519"))
	fmt.Fprintf(&b, "    CertificateFile %s\n", filepath.Join(dir, "id_ed25519-cert.pub"))
	fmt.Fprintf(&b, "    StrictHostKeyChecking yes\n")
	fmt.Fprintf(&b, "    UserKnownHostsFile %s\n", knownHosts)
	fmt.Fprintf(&b, "    RevokedHostKeys %s\n", revoked)
	if s.bastion != "" {
		fmt.Fprintf(&b, "    ProxyJump %s\n", s.bastion)
	}
	conf := filepath.Join(sshDir, "sshca.conf")
	if err := replaceFile(conf, b.Bytes(), 0o600); err != nil {
		return err
	}
	changed, err := includeAtTop(filepath.Join(sshDir, "config"), "Include "+conf)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "wrote %s (hosts %s)\n", conf, strings.Join(patterns, ","))
	if changed {
		fmt.Fprintf(w, "added \"Include %s\" at the top of %s\n", conf, filepath.Join(sshDir, "config"))
	} else {
		fmt.Fprintf(w, "%s already includes it first\n", filepath.Join(sshDir, "config"))
	}
	return nil
}

// includeAtTop makes line the first line of the ssh config at path (created 0600 if missing),
// dropping any other copy of it, and says whether the file changed.
func includeAtTop(path, line string) (bool, error) {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	lines := strings.SplitAfter(string(old), "\n")
	if len(lines) > 0 && strings.TrimSpace(lines[0]) == line && strings.Count(string(old), line) == 1 {
		return false, nil
	}
	var b strings.Builder
	b.WriteString(line + "\n")
	for _, l := range lines {
		if strings.TrimSpace(l) != line {
			b.WriteString(l)
		}
	}
	return true, replaceFile(path, []byte(b.String()), mode)
}

// replaceFile replaces path with data (mode) through a temporary file and a rename, so ssh
// never reads half a file.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
