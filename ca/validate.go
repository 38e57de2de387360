package ca

import (
	"fmt"
	"regexp"
	"time"
)

// ParseTTL parses a Go duration string ("90s", "5m", "1h") and truncates it to whole seconds
// (certificates count in seconds). Empty means "the policy's default" (zero). Errors are
// KindInvalid: not a duration, not positive, shorter than MinTTL (one minute) after
// truncation ("1ns" would otherwise be a certificate already expired, and spend a single-use
// token), or longer than max when max > 0.
func ParseTTL(s string, max time.Duration) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, Invalid("ttl %q is not a duration such as \"90s\", \"5m\" or \"1h\"", truncate(s, 32))
	}
	if d <= 0 {
		return 0, Invalid("ttl must be positive, got %q", truncate(s, 32))
	}
	d = d.Truncate(time.Second)
	if d < MinTTL {
		return 0, Invalid("ttl must be at least 1m, got %q", truncate(s, 32))
	}
	if max > 0 && d > max {
		return 0, Invalid("ttl %s exceeds the service maximum of %s", d, max)
	}
	return d, nil
}

var userPrincipalRE = regexp.MustCompile(`^[a-z_][a-z0-9._-]{0,31}$`)

// ValidUserPrincipal reports whether p is a well-formed user principal: a Unix user name.
func ValidUserPrincipal(p string) bool { return userPrincipalRE.MatchString(p) }

// ValidHostPrincipal reports whether p is a host name the service signs: a lower-case RFC 1123
// name (labels of 1-63 characters of [a-z0-9-], no leading or trailing '-', 253 characters in
// all, no trailing dot, the last label neither all digits nor "0x..."), or an IPv4 or IPv6
// literal in canonical form (netip.ParseAddr(p).String() == p) without a zone. Never a
// wildcard, a port, or ':' outside an IPv6 literal. See hostNameProblem for the reasons.
func ValidHostPrincipal(p string) bool { return hostNameProblem(p) == "" }

func validatePrincipals(kind CertKind, ps []string, max int) error {
	what := "principal"
	valid := ValidUserPrincipal
	if kind == HostCert {
		what, valid = "hostname", ValidHostPrincipal
	}
	if max > 0 && len(ps) > max {
		return Invalid("%d %ss requested; at most %d", len(ps), what, max)
	}
	seen := make(map[string]bool, len(ps))
	for _, p := range ps {
		if !valid(p) {
			if kind == HostCert {
				return Invalid("hostname %q is not a host name the service signs: %s; use a lower-case DNS name (RFC 1123) or an IP address in canonical form", truncate(p, 64), hostNameProblem(p))
			}
			return Invalid("principal %q must match ^[a-z_][a-z0-9._-]{0,31}$", truncate(p, 64))
		}
		if seen[p] {
			return Invalid("%s %q appears twice", what, p)
		}
		seen[p] = true
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s...", s[:n])
}
