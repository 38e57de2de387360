package bastion

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Defaults of SSHDConfigOptions; the agent's flags default to the same files.
const (
	DefaultHostKey                  = "/etc/ssh/ssh_host_ed25519_key"
	DefaultHostCertificate          = "/etc/ssh/ssh_host_ed25519_key-cert.pub"
	DefaultTrustedUserCAKeys        = "/etc/ssh/sshca_user_ca.pub"
	DefaultRevokedKeys              = "/etc/ssh/sshca.krl"
	DefaultAuthorizedPrincipalsFile = "/etc/ssh/auth_principals/%u"
	DefaultRecordCommand            = "/usr/libexec/sshca/sshca-record"
)

// Algorithms a bastion offers and accepts: those of OpenSSH 9.2 without SHA-1 (ssh-rsa),
// DSA, CBC/CTR ciphers, encrypt-and-MAC MACs, or NIST-curve key exchange.
const (
	kexAlgorithms = "sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org"
	ciphers       = "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com"
	macs          = "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com"
	// Host keys are never security keys, so no sk- variants here.
	hostKeyAlgorithms = "ssh-ed25519-cert-v01@openssh.com,ecdsa-sha2-nistp256-cert-v01@openssh.com," +
		"ecdsa-sha2-nistp384-cert-v01@openssh.com,ecdsa-sha2-nistp521-cert-v01@openssh.com," +
		"rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-256-cert-v01@openssh.com," +
		"ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256"
	// Certificates only: with AuthorizedKeysFile none a plain key could never log in anyway.
	pubkeyAcceptedAlgorithms = "ssh-ed25519-cert-v01@openssh.com,sk-ssh-ed25519-cert-v01@openssh.com," +
		"ecdsa-sha2-nistp256-cert-v01@openssh.com,ecdsa-sha2-nistp384-cert-v01@openssh.com," +
		"ecdsa-sha2-nistp521-cert-v01@openssh.com,sk-ecdsa-sha2-nistp256-cert-v01@openssh.com," +
		"rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-256-cert-v01@openssh.com"
	caSignatureAlgorithms = "ssh-ed25519,sk-ssh-ed25519@openssh.com,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384," +
		"ecdsa-sha2-nistp521,sk-ecdsa-sha2-nistp256@openssh.com,rsa-sha2-512,rsa-sha2-256"
)

// SSHDConfigOptions are the site-specific parts of a bastion's sshd_config. Zero values take
// the defaults named on each field; everything else in the configuration is fixed.
type SSHDConfigOptions struct {
	Port                     int      // 22
	ListenAddresses          []string // none: every address
	HostKeys                 []string // DefaultHostKey
	HostCertificates         []string // DefaultHostCertificate; an empty non-nil slice: none
	TrustedUserCAKeys        string   // DefaultTrustedUserCAKeys (kept current by the agent)
	RevokedKeys              string   // DefaultRevokedKeys (kept current by the agent)
	AuthorizedPrincipalsFile string   // DefaultAuthorizedPrincipalsFile

	// DisableForwarding turns every kind of forwarding off whatever the certificate grants.
	// By default the certificate decides (see the comment in the rendered configuration).
	DisableForwarding bool
	// X11Forwarding lets certificates with permit-X11-forwarding forward X11; off by default.
	X11Forwarding bool

	// RecordGroups are the Unix groups whose sessions sshca-record records: their Match block
	// runs RecordCommand as ForceCommand. Empty: the block is rendered commented out, as an
	// example to enable.
	RecordGroups  []string
	RecordCommand string // DefaultRecordCommand

	// PermitRootLogin is "no" unless set. For tests only, which run as root: they set
	// "prohibit-password" (root by certificate). Other values are refused.
	PermitRootLogin string
}

// SSHDConfig renders a hardened sshd_config for a bastion: certificates from the sshca user CA
// are the only way in, the KRL is enforced on every authentication, only modern algorithms are
// offered, and LogLevel VERBOSE logs each session's certificate key ID and serial (the agent
// ends sessions of revoked certificates from it). Every directive carries a comment saying why.
//
// Values are checked, not escaped: a path with whitespace, a quote, '#' or a control
// character is an error, so no option can smuggle in another directive. All problems are
// reported together.
func SSHDConfig(o SSHDConfigOptions) (string, error) {
	cfg, _, err := renderSSHDConfig(o)
	return cfg, err
}

// directive is one line of the rendering: keyword as written, value.
type directive struct{ keyword, value string }

// renderSSHDConfig renders the configuration and returns the directives of its global part.
func renderSSHDConfig(o SSHDConfigOptions) (string, []directive, error) {
	if o.Port == 0 {
		o.Port = 22
	}
	if len(o.HostKeys) == 0 {
		o.HostKeys = []string{DefaultHostKey}
	}
	if o.HostCertificates == nil {
		o.HostCertificates = []string{DefaultHostCertificate}
	}
	if o.RecordCommand == "" {
		o.RecordCommand = DefaultRecordCommand
	}
	if o.TrustedUserCAKeys == "" {
		o.TrustedUserCAKeys = DefaultTrustedUserCAKeys
	}
	if o.RevokedKeys == "" {
		o.RevokedKeys = DefaultRevokedKeys
	}
	if o.AuthorizedPrincipalsFile == "" {
		o.AuthorizedPrincipalsFile = DefaultAuthorizedPrincipalsFile
	}
	if o.PermitRootLogin == "" {
		o.PermitRootLogin = "no"
	}
	if err := o.validate(); err != nil {
		return "", nil, err
	}
	var set []directive

	var b strings.Builder
	section := func(title string) { fmt.Fprintf(&b, "\n## %s\n", title) }
	// line writes one directive with the reason for it; a why of "" means the comment above
	// (same reason as the previous directive) covers it.
	line := func(keyword, value, why string) {
		if why != "" {
			for _, w := range strings.Split(why, "\n") {
				fmt.Fprintf(&b, "# %s\n", w)
			}
		}
		fmt.Fprintf(&b, "%s %s\n", keyword, value)
		set = append(set, directive{keyword, value})
	}
	yesNo := func(v bool) string {
		if v {
			return "yes"
		}
		return "no"
	}

	b.WriteString("# sshd_config for an sshca bastion, generated by `sshca bastion sshd-config`.\n")
	b.WriteString("# Check it with `sshd -t -f FILE` before installing it. sshd keeps the first value it\n")
	b.WriteString("# reads for a global directive, but a matching Match block overrides the global value;\n")
	b.WriteString("# among matching Match blocks the first value wins. So the global part ends with a\n")
	b.WriteString("# `Match all` block that repeats every directive a Match block could change: neither a\n")
	b.WriteString("# line nor a Match block appended below can loosen anything set here. Site additions go\n")
	b.WriteString("# above that `Match all` line (below it they belong to the block). No Include: drop-ins\n")
	b.WriteString("# under sshd_config.d/ are not read. The agent (--sshd-config) checks sshd's effective\n")
	b.WriteString("# configuration (sshd -T -C) against this one and reports drift on /healthz.\n")

	section("Listening and host identity")
	line("Port", strconv.Itoa(o.Port), "The port clients connect to.")
	for i, a := range o.ListenAddresses {
		line("ListenAddress", a, first(i, "Only these addresses; a bastion should not listen on its inner side."))
	}
	for i, k := range o.HostKeys {
		line("HostKey", k, first(i, "Host private keys (ed25519 by default; no DSA)."))
	}
	for i, c := range o.HostCertificates {
		line("HostCertificate", c, first(i, "Clients trust the host through the sshca host CA (@cert-authority), not key by key."))
	}

	section("Authentication: sshca user certificates only")
	line("TrustedUserCAKeys", o.TrustedUserCAKeys, "The sshca user CA keys; the agent keeps this file current through key rotations.")
	line("RevokedKeys", o.RevokedKeys, "The KRL the agent replaces atomically; sshd re-reads it on every authentication.\n"+
		"A missing or unreadable file refuses every key, so the agent writes an empty KRL before sshd starts.")
	line("AuthorizedPrincipalsFile", o.AuthorizedPrincipalsFile, "Which certificate principals may log in as each local user.")
	line("AuthorizedKeysFile", "none", "No authorized_keys: a long-lived key must not be a way around the CA.")
	line("AuthorizedKeysCommand", "none", "Nor keys or principals from a program.")
	line("AuthorizedPrincipalsCommand", "none", "")
	line("PubkeyAuthentication", "yes", "Certificates are public-key authentication.")
	line("AuthenticationMethods", "publickey", "And nothing else is ever enough to log in.")
	line("PasswordAuthentication", "no", "No passwords: they can be guessed, phished and are not short-lived.")
	line("PermitEmptyPasswords", "no", "Never, even if password authentication were turned back on.")
	line("KbdInteractiveAuthentication", "no", "No keyboard-interactive (PAM prompts, OTP): the CA decides who gets in.")
	line("ChallengeResponseAuthentication", "no", "The older name of the same thing, for readers who look for it.")
	line("HostbasedAuthentication", "no", "Trusting another host's word for a user would bypass the CA.")
	line("IgnoreRhosts", "yes", "Nor .rhosts/.shosts files.")
	line("PermitRootLogin", o.PermitRootLogin, "Log in as yourself and escalate on the host, where it is audited.")
	line("MaxAuthTries", "3", "Few attempts per connection: a client offers its certificate first.")
	line("LoginGraceTime", "20", "Unauthenticated connections are cut after 20 seconds.")
	line("MaxStartups", "10:30:60", "Shed unauthenticated connections early under a flood (start 10, 30% drop, max 60).")

	section("Algorithms: modern only (no SHA-1, no DSA, no CBC, no encrypt-and-MAC)")
	line("KexAlgorithms", kexAlgorithms, "Post-quantum hybrid first, then X25519.")
	line("Ciphers", ciphers, "AEAD ciphers only.")
	line("MACs", macs, "Encrypt-then-MAC SHA-2 only (unused with AEAD ciphers, which carry their own).")
	line("HostKeyAlgorithms", hostKeyAlgorithms, "Host certificates first; RSA only with SHA-2 signatures.")
	line("PubkeyAcceptedAlgorithms", pubkeyAcceptedAlgorithms, "User certificates only, security keys (sk-) included; RSA only with SHA-2.")
	line("CASignatureAlgorithms", caSignatureAlgorithms, "A certificate signed by its CA with SHA-1 (ssh-rsa) is refused.")

	section("Sessions")
	line("LogLevel", "VERBOSE", "Logs each login's certificate key ID and serial; the agent ends sessions of\n"+
		"revoked certificates from it (sshd checks the KRL only when a session starts).")
	line("ClientAliveInterval", "60", "Probe idle clients every minute...")
	line("ClientAliveCountMax", "3", "...and drop the dead ones after three unanswered probes.")
	line("UseDNS", "no", "Log and match client addresses as they are, without trusting reverse DNS.")
	line("PermitUserEnvironment", "no", "Users' ~/.ssh/environment could set LD_PRELOAD and friends.")
	line("PermitUserRC", "yes", "~/.ssh/rc runs only for certificates with permit-user-rc: the certificate decides.")

	section("Forwarding: off unless the certificate grants it")
	fwd := "The certificate decides: sshd allows port and agent forwarding only for certificates\n" +
		"carrying permit-port-forwarding / permit-agent-forwarding, which sshca adds only when the\n" +
		"policy grants them. \"no\" here would overrule every certificate, so it stays \"yes\"."
	if o.DisableForwarding {
		fwd = "This site turns every kind of forwarding off, whatever a certificate grants."
		line("DisableForwarding", "yes", fwd)
		fwd = ""
	}
	line("AllowTcpForwarding", yesNo(!o.DisableForwarding), fwd)
	line("AllowAgentForwarding", yesNo(!o.DisableForwarding), "")
	line("AllowStreamLocalForwarding", "no", "Unix socket forwarding is not something a bastion offers.")
	if o.X11Forwarding && !o.DisableForwarding {
		line("X11Forwarding", "yes", "This site allows X11 forwarding to certificates with permit-X11-forwarding.")
	} else {
		line("X11Forwarding", "no", "X11 forwarding exposes the client's display; a bastion does not need it.")
	}
	line("PermitTunnel", "no", "No tun/tap devices: a bastion is not a VPN.")
	line("GatewayPorts", "no", "Remote forwards listen on loopback only, never for the whole network.")

	recordBlock(&b, o)

	b.WriteString("\n## Every connection: the values above again (site additions go above this line)\n")
	b.WriteString("# sshd applies a matching Match block over the global values, and the first matching\n")
	b.WriteString("# block's value wins: this one matches every connection and comes first, so a Match\n")
	b.WriteString("# block appended below cannot loosen authentication or forwarding.\n")
	b.WriteString("Match all\n")
	for _, d := range set {
		if matchKeywords[strings.ToLower(d.keyword)] {
			fmt.Fprintf(&b, "\t%s %s\n", d.keyword, d.value)
		}
	}
	return b.String(), set, nil
}

// recordBlock renders the Match block of recorded sessions. It sits above `Match all` because
// the first matching block's value wins: below it, `PermitUserRC yes` and the forwarding of
// `Match all` would win over this block's.
func recordBlock(b *strings.Builder, o SSHDConfigOptions) {
	prefix := ""
	b.WriteString("\n## Recorded sessions (sshca-record, see README: Session recording)\n")
	if len(o.RecordGroups) == 0 {
		b.WriteString("# To record the sessions of some groups, render with --record-group, or uncomment this\n")
		b.WriteString("# block and name them. sshd runs the recorder through the user's shell, so recorded\n")
		b.WriteString("# accounts need start-up files (~/.bashrc, ~/.profile) they cannot write. Once it is\n")
		b.WriteString("# uncommented, site additions go above it (below its Match line they belong to it).\n")
		prefix = "# "
	} else {
		b.WriteString("# Site additions go above this block: below its Match line they belong to it.\n")
	}
	groups := "sshca-recorded"
	if len(o.RecordGroups) > 0 {
		groups = strings.Join(o.RecordGroups, ",")
	}
	fmt.Fprintf(b, "%sMatch Group %s\n", prefix, groups)
	for _, d := range []directive{
		{"ForceCommand", o.RecordCommand}, // reads the certificate's force-command from $SSH_USER_AUTH
		{"ExposeAuthInfo", "yes"},
		{"PermitUserRC", "no"}, // ~/.ssh/rc would run before the recorder, unrecorded
		{"DisableForwarding", "yes"},
		{"AllowTcpForwarding", "no"},
		{"AllowAgentForwarding", "no"},
		{"AllowStreamLocalForwarding", "no"},
		{"X11Forwarding", "no"},
		{"PermitTunnel", "no"},
	} {
		fmt.Fprintf(b, "%s\t%s %s\n", prefix, d.keyword, d.value)
	}
}

// matchKeywords are the keywords sshd (OpenSSH 9.2) allows in a Match block, lower case
// (sshd_config(5), Match).
var matchKeywords = setOf("acceptenv", "allowagentforwarding", "allowgroups", "allowstreamlocalforwarding",
	"allowtcpforwarding", "allowusers", "authenticationmethods", "authorizedkeyscommand",
	"authorizedkeyscommanduser", "authorizedkeysfile", "authorizedprincipalscommand",
	"authorizedprincipalscommanduser", "authorizedprincipalsfile", "banner", "casignaturealgorithms",
	"channeltimeout", "chrootdirectory", "clientalivecountmax", "clientaliveinterval", "denygroups",
	"denyusers", "disableforwarding", "exposeauthinfo", "forcecommand", "gatewayports",
	"gssapiauthentication", "hostbasedacceptedalgorithms", "hostbasedauthentication",
	"hostbasedusesnamefrompacketonly", "ignorerhosts", "include", "ipqos", "kbdinteractiveauthentication",
	"kerberosauthentication", "loglevel", "maxauthtries", "maxsessions", "passwordauthentication",
	"permitemptypasswords", "permitlisten", "permitopen", "permitrootlogin", "permittty", "permittunnel",
	"permituserrc", "pubkeyacceptedalgorithms", "pubkeyauthentication", "pubkeyauthoptions", "rekeylimit",
	"revokedkeys", "setenv", "streamlocalbindmask", "streamlocalbindunlink", "trustedusercakeys",
	"unusedconnectiontimeout", "x11displayoffset", "x11forwarding", "x11uselocalhost")

func setOf(ks ...string) map[string]bool {
	m := make(map[string]bool, len(ks))
	for _, k := range ks {
		m[k] = true
	}
	return m
}

// SSHDBaseline is what sshd -T prints for a bastion's hardened settings: keyword (lower case)
// → value. Drift is any connection for which sshd's effective value differs.
type SSHDBaseline map[string]string

// Baseline returns the effective values the rendering of o sets, as sshd -T prints them, for
// every connection: all its directives but the site's addresses and keys (Port, ListenAddress,
// HostKey, HostCertificate, which a Match block cannot change) and ChallengeResponseAuthentication
// (an alias sshd -T prints as kbdinteractiveauthentication), plus DisableForwarding.
func Baseline(o SSHDConfigOptions) (SSHDBaseline, error) {
	_, set, err := renderSSHDConfig(o)
	if err != nil {
		return nil, err
	}
	skip := setOf("port", "listenaddress", "hostkey", "hostcertificate", "challengeresponseauthentication")
	b := SSHDBaseline{"disableforwarding": "no"}
	for _, d := range set {
		k := strings.ToLower(d.keyword)
		if skip[k] {
			continue
		}
		v := d.value
		if k == "permitrootlogin" && v == "prohibit-password" {
			v = "without-password" // sshd -T prints the older name
		}
		b[k] = v
	}
	return b, nil
}

// first returns why for the first of repeated directives, "" for the others.
func first(i int, why string) string {
	if i == 0 {
		return why
	}
	return ""
}

func (o SSHDConfigOptions) validate() error {
	var errs []error
	if o.Port < 1 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d out of range", o.Port))
	}
	check := func(what, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is empty", what))
			return
		}
		for _, r := range v {
			if r <= ' ' || r == 0x7f || r == '"' || r == '\'' || r == '#' || r == '\\' {
				errs = append(errs, fmt.Errorf("%s %q: whitespace, quotes, '#', '\\' and control characters are not allowed", what, v))
				return
			}
		}
	}
	check("TrustedUserCAKeys", o.TrustedUserCAKeys)
	check("RevokedKeys", o.RevokedKeys)
	check("AuthorizedPrincipalsFile", o.AuthorizedPrincipalsFile)
	if len(o.RecordGroups) > 0 {
		check("RecordCommand", o.RecordCommand)
	}
	for _, g := range o.RecordGroups {
		check("RecordGroups", g)
		if strings.ContainsAny(g, ",!*?") {
			errs = append(errs, fmt.Errorf("RecordGroups %q: one group name, no pattern characters (, ! * ?)", g))
		}
	}
	for _, a := range o.ListenAddresses {
		check("ListenAddress", a)
	}
	for _, k := range o.HostKeys {
		check("HostKey", k)
	}
	for _, c := range o.HostCertificates {
		check("HostCertificate", c)
	}
	if o.PermitRootLogin != "no" && o.PermitRootLogin != "prohibit-password" {
		errs = append(errs, fmt.Errorf("PermitRootLogin %q: only \"no\" (or \"prohibit-password\" in tests)", o.PermitRootLogin))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bastion: sshd_config: %w", err)
	}
	return nil
}
