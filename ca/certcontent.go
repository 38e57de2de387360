package ca

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// MinTTL is the shortest lifetime a certificate is issued with. A shorter one is mostly over
// before it reaches its holder (the signer backdates ValidAfter for clock skew, not
// ValidBefore), and a request for it would spend a single-use token for nothing.
const MinTTL = time.Minute

// MaxForceCommand bounds the force-command critical option, in bytes.
const MaxForceCommand = 4096

// PolicyFault is a decision the policy allowed that the service will not sign, because sshd
// (or ssh-keygen) would refuse the certificate or read it differently than the policy meant.
// It is a fault of the policy, not of the caller: the request is denied (KindDenied) with
// Reason, logged at error level with Field and Value, and counted by Field.
type PolicyFault struct {
	// Field names what was wrong, from a fixed set (safe as a metric label): "principals",
	// "ttl_seconds", "extensions", "critical_options", "critical_options.source-address",
	// "critical_options.force-command".
	Field string
	// Value is the faulty value exactly as the policy gave it: a principal, the TTL in
	// seconds, an extension or option name, or "name=value". Unbounded: log it, truncate it
	// before showing it (Reason does).
	Value string
	// Why says what the service accepts instead.
	Why string
}

func (f *PolicyFault) Error() string { return "sshca: policy fault in " + f.Field }

// Reason is the caller-safe explanation: the field, the value quoted and cut to 128 bytes,
// and why it cannot be signed.
func (f *PolicyFault) Reason() string {
	return fmt.Sprintf("policy fault in %s: %q: %s", f.Field, truncate(f.Value, 128), f.Why)
}

// FaultObserver learns of every policy fault the Authority refuses to sign (metrics, readiness
// details). It is called on the request path and must not block.
type FaultObserver interface {
	PolicyFault(f PolicyFault)
}

// Flag extensions and the flag critical option: their value must be empty. OpenSSH reads them
// as flags and treats any data as corrupt: sshd refuses the certificate ("Certificate option
// ... corrupt (extra data)") and `ssh-keygen -L` exits with "Option corrupt: extra data at
// end" (PROTOCOL.certkeys: "flag options have empty data").
var flagExtensions = []string{
	"no-touch-required", "permit-X11-forwarding", "permit-agent-forwarding",
	"permit-port-forwarding", "permit-pty", "permit-user-rc",
}

// CheckCertificateContent checks a certificate's content as the Authority is about to sign it
// (after narrowing to the request and the caps) and returns the first fault, or nil. It
// refuses anything OpenSSH 9.2 would reject or read differently:
//
//   - principals: at least one; user principals are Unix user names (ValidUserPrincipal),
//     host principals RFC 1123 names or canonical IP literals (ValidHostPrincipal). No
//     wildcards: ssh matches host certificate principals as patterns, and an empty list is
//     valid for every user or host.
//   - ttl: at least MinTTL (one minute).
//   - host certificates carry no extensions and no critical options. A policy that grants one
//     for a host is a fault, not silently dropped: whatever it meant (a restriction such as
//     source-address above all) would not be carried, and a certificate less restricted than
//     its policy intends must not be signed.
//   - user certificates: every extension in allowExt and every critical option in allowOpts
//     (nothing outside the allow-lists is dropped silently: it is a fault). Flag extensions
//     (permit-*, no-touch-required) and verify-required have an empty value. A critical
//     option sshd does not know (anything but force-command, source-address,
//     verify-required) is a fault even when allow-listed: sshd refuses such a certificate.
//   - force-command: non-empty, at most MaxForceCommand bytes, no NUL, CR or LF (sshd runs
//     it with the shell; a newline would make it two commands in logs and audits).
//   - source-address: see CheckSourceAddress.
func CheckCertificateContent(kind CertKind, principals []string, ttl time.Duration, perms ssh.Permissions, allowExt, allowOpts []string) *PolicyFault {
	if len(principals) == 0 {
		return &PolicyFault{Field: "principals", Why: "no principals: a certificate without principals is valid for every user or host"}
	}
	for _, p := range principals {
		if kind == HostCert {
			if why := hostNameProblem(p); why != "" {
				return &PolicyFault{Field: "principals", Value: p, Why: "not a host name the service signs: " + why}
			}
		} else if !ValidUserPrincipal(p) {
			return &PolicyFault{Field: "principals", Value: p, Why: "not a user name the service signs: must match " + userPrincipalRE.String()}
		}
	}
	if ttl < MinTTL {
		return &PolicyFault{Field: "ttl_seconds", Value: strconv.FormatInt(int64(ttl/time.Second), 10),
			Why: "a certificate lives at least 60 seconds"}
	}
	extNames, optNames := sortedKeys(perms.Extensions), sortedKeys(perms.CriticalOptions)
	if kind == HostCert {
		if len(extNames) > 0 {
			return &PolicyFault{Field: "extensions", Value: extNames[0], Why: "host certificates carry no extensions"}
		}
		if len(optNames) > 0 {
			return &PolicyFault{Field: "critical_options", Value: optNames[0], Why: "host certificates carry no critical options"}
		}
		return nil
	}
	for _, name := range extNames {
		v := perms.Extensions[name]
		if !slices.Contains(allowExt, name) {
			return &PolicyFault{Field: "extensions", Value: name, Why: "not in the service's allow-list of extensions " + strings.Join(allowExt, ", ")}
		}
		if slices.Contains(flagExtensions, name) && v != "" {
			return &PolicyFault{Field: "extensions", Value: name + "=" + v, Why: "a flag extension has an empty value (sshd and ssh-keygen reject a certificate whose flag carries data)"}
		}
	}
	for _, name := range optNames {
		v := perms.CriticalOptions[name]
		if !slices.Contains(allowOpts, name) {
			return &PolicyFault{Field: "critical_options", Value: name, Why: "not in the service's allow-list of critical options " + strings.Join(allowOpts, ", ")}
		}
		switch name {
		case "verify-required":
			if v != "" {
				return &PolicyFault{Field: "critical_options", Value: name + "=" + v, Why: "verify-required is a flag: its value is empty"}
			}
		case "force-command":
			if why := forceCommandProblem(v); why != "" {
				return &PolicyFault{Field: "critical_options.force-command", Value: v, Why: why}
			}
		case "source-address":
			if err := CheckSourceAddress(v); err != nil {
				return &PolicyFault{Field: "critical_options.source-address", Value: v, Why: err.Error()}
			}
		default:
			return &PolicyFault{Field: "critical_options", Value: name, Why: "sshd refuses certificates with a critical option it does not know (it knows force-command, source-address, verify-required)"}
		}
	}
	return nil
}

func forceCommandProblem(c string) string {
	switch {
	case c == "":
		return "force-command is empty; give the command to run"
	case len(c) > MaxForceCommand:
		return fmt.Sprintf("force-command is %d bytes; at most %d", len(c), MaxForceCommand)
	case strings.ContainsAny(c, "\x00\r\n"):
		return "force-command holds a NUL, CR or LF; give one command line"
	}
	return ""
}

// CheckSourceAddress checks a source-address critical option: a comma-separated list of IPv4
// and IPv6 addresses and CIDR prefixes, as sshd reads it with addr_match_cidr_list (addr.c).
// Each element is an address (netip.ParseAddr, no zone) or a prefix whose host bits are zero
// (netip.ParsePrefix, Masked() == itself); no spaces, no empty element, no host names.
//
// Host bits matter: sshd's addr_pton_cidr refuses "127.0.0.1/8" (addr_host_is_all0s), so
// addr_match_cidr_list fails on the whole list and sshd 9.2 refuses the certificate for every
// client address ("Certificate source-address contents invalid"); the holder could never log
// in (TestSourceAddressWithSSHD shows it). netip is stricter than sshd's getaddrinfo where
// that helps: "10.1" and leading zeros are refused.
func CheckSourceAddress(list string) error {
	if list == "" {
		return fmt.Errorf("source-address is empty; give addresses or CIDRs such as 10.0.0.0/8")
	}
	for el := range strings.SplitSeq(list, ",") {
		switch {
		case el == "":
			return fmt.Errorf("source-address has an empty element; separate addresses with single commas")
		case strings.TrimSpace(el) != el || strings.ContainsAny(el, " \t\r\n"):
			return fmt.Errorf("source-address element %q holds spaces; separate addresses with commas only", truncate(el, 64))
		case strings.Contains(el, "%"):
			return fmt.Errorf("source-address element %q has a zone; sshd does not accept zones", truncate(el, 64))
		}
		if !strings.Contains(el, "/") {
			if _, err := netip.ParseAddr(el); err != nil {
				return fmt.Errorf("source-address element %q is not an IP address or CIDR", truncate(el, 64))
			}
			continue
		}
		p, err := netip.ParsePrefix(el)
		if err != nil {
			return fmt.Errorf("source-address element %q is not a CIDR such as 10.0.0.0/8", truncate(el, 64))
		}
		if p.Masked() != p {
			return fmt.Errorf("source-address element %q has host bits set; sshd refuses it, use %s", truncate(el, 64), p.Masked())
		}
	}
	return nil
}

// hostNameProblem says what is wrong with h as a host certificate principal, or "" when it is
// a lower-case RFC 1123 host name or a canonical IP literal.
//
// A name: labels of 1 to 63 characters of [a-z0-9-], not starting or ending with '-', 253
// characters in all, no trailing dot, the last label neither all digits nor starting with
// "0x" (so "127.1" and "0x7f.1", which resolvers may read as IPv4 addresses, are refused).
// Lower case only: ssh lower-cases the host name before it checks a host certificate.
// An IP address: netip.ParseAddr(h).String() == h, without a zone. Nothing else holds ':'
// (never a port). "::ffff:127.0.0.1" is canonical for netip and accepted.
func hostNameProblem(h string) string {
	if h == "" {
		return "empty"
	}
	if strings.Contains(h, "*") || strings.Contains(h, "?") {
		return "wildcards are not signed (ssh matches host certificate principals as patterns)"
	}
	if a, err := netip.ParseAddr(h); err == nil {
		switch {
		case a.Zone() != "":
			return "an IPv6 address with a zone; drop the %zone"
		case a.String() != h:
			return "an IP address not in canonical form; write " + a.String()
		}
		return ""
	}
	if strings.Contains(h, ":") {
		return "':' only belongs in an IPv6 address; a host name carries no port"
	}
	if len(h) > 253 {
		return fmt.Sprintf("%d characters; a host name has at most 253", len(h))
	}
	if strings.HasSuffix(h, ".") {
		return "trailing dot; write the name without it"
	}
	labels := strings.Split(h, ".")
	for _, l := range labels {
		if l == "" {
			return "an empty label (two dots in a row or a leading dot)"
		}
		if len(l) > 63 {
			return fmt.Sprintf("label of %d characters; at most 63", len(l))
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "a label starts or ends with '-'"
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
			case c >= 'A' && c <= 'Z':
				return "upper case; write host names in lower case"
			default:
				return fmt.Sprintf("character %q; host names are [a-z0-9-] labels separated by dots", c)
			}
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" || strings.HasPrefix(last, "0x") {
		return "the last label is numeric; write an IPv4 address in dotted-quad form, or a name whose last label has a letter"
	}
	return ""
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
