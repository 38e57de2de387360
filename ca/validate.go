package ca

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// ParseTTL parses a Go duration string. Empty means "the policy's default" (zero).
func ParseTTL(s string, max time.Duration) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, Invalid("ttl %q is not a duration such as \"90s\", \"5m\" or \"1h\"", truncate(s, 32))
	}
	if d <= 0 {
		return 0, Invalid("ttl must be positive, got %q", s)
	}
	if max > 0 && d > max {
		return 0, Invalid("ttl %s exceeds the service maximum of %s", d, max)
	}
	return d, nil
}

var (
	userPrincipalRE = regexp.MustCompile(`^[a-z_][a-z0-9._-]{0,31}$`)
	hostPrincipalRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.:-]{0,252})$`)
)

// ValidUserPrincipal reports whether p is a well-formed user principal: a Unix user name.
func ValidUserPrincipal(p string) bool { return userPrincipalRE.MatchString(p) }

// ValidHostPrincipal reports whether p is a well-formed host name or IP address, lower case,
// without wildcards.
func ValidHostPrincipal(p string) bool {
	return hostPrincipalRE.MatchString(p) && !strings.Contains(p, "..")
}

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
				return Invalid("hostname %q is not a lower-case host name or IP address", truncate(p, 64))
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
