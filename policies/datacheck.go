package policies

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

// checkLoaded refuses a policy whose data or whose decisions would make certificates sshd
// rejects or reads differently (ca.CheckCertificateContent): a load, a hot reload or a bundle
// then fails, and a reloader keeps the last good policy. It checks the documented settings of
// the shipped policy (checkData) and runs the self-check's requests (checkInputs) through the
// engine, passing every allowed certificate decision through the certificate validator.
func checkLoaded(ctx context.Context, e *Engine, doc map[string]any) error {
	if err := checkData(doc); err != nil {
		return err
	}
	return checkDecisions(ctx, e)
}

// The allow-lists a policy's data is checked against at load: the service's defaults (the
// configuration does not change them).
var (
	loadExtensions      = ca.DefaultLimits.Extensions
	loadCriticalOptions = ca.DefaultLimits.CriticalOptions
)

// checkData checks the shipped policy's documented data keys (README.md beside this file)
// under data.sshca_settings, where present:
//
//	user.group_source_addresses   {group: [address or CIDR, ...]}  -> source-address
//	user.principal_force_command  {principal: "command"}           -> force-command
//	user.group_extensions         {group: {extension: ""}}
//	user.default_extensions       {extension: ""}
//	host.group_patterns           {group: [host name pattern, ...]}
//
// A key of the wrong shape, or a value the certificate validator refuses, is an error naming
// the key, the entry and the value. Other keys and other policies' data are not looked at.
func checkData(doc map[string]any) error {
	settings, ok := doc["sshca_settings"].(map[string]any)
	if !ok {
		return nil
	}
	user, _ := settings["user"].(map[string]any)
	host, _ := settings["host"].(map[string]any)
	var errs []string
	bad := func(key, entry string, f *ca.PolicyFault) {
		errs = append(errs, fmt.Sprintf("%s[%q]: %s", key, entry, f.Reason()))
	}
	shape := func(key, want string) { errs = append(errs, fmt.Sprintf("%s is not %s", key, want)) }
	grant := func(perms ssh.Permissions) *ca.PolicyFault {
		return ca.CheckCertificateContent(ca.UserCert, []string{"data-check"}, time.Hour, perms, loadExtensions, loadCriticalOptions)
	}

	if v, ok := user["group_source_addresses"]; ok {
		for _, g := range sortedKeys(v) {
			list, ok := stringList(v.(map[string]any)[g])
			if !ok {
				shape("user.group_source_addresses["+g+"]", "a list of addresses and CIDRs")
				continue
			}
			for _, a := range list {
				// One element at a time, so a comma inside an element is refused too.
				if strings.Contains(a, ",") {
					bad("user.group_source_addresses", g, &ca.PolicyFault{Field: "critical_options.source-address", Value: a, Why: "one address or CIDR per list element"})
				} else if f := grant(ssh.Permissions{CriticalOptions: map[string]string{"source-address": a}}); f != nil {
					bad("user.group_source_addresses", g, f)
				}
			}
		}
		if _, isMap := v.(map[string]any); !isMap {
			shape("user.group_source_addresses", "an object of group -> list of CIDRs")
		}
	}
	if v, ok := user["principal_force_command"]; ok {
		m, isMap := v.(map[string]any)
		if !isMap {
			shape("user.principal_force_command", "an object of principal -> command")
		}
		for _, p := range sortedKeys(v) {
			c, ok := m[p].(string)
			if !ok {
				shape("user.principal_force_command["+p+"]", "a string")
				continue
			}
			if f := grant(ssh.Permissions{CriticalOptions: map[string]string{"force-command": c}}); f != nil {
				bad("user.principal_force_command", p, f)
			}
		}
	}
	checkExt := func(key, entry string, v any) {
		m, ok := v.(map[string]any)
		if !ok {
			shape(key, "an object of extension -> \"\"")
			return
		}
		ext := map[string]string{}
		for _, name := range sortedKeys(m) {
			s, ok := m[name].(string)
			if !ok {
				shape(key+"["+name+"]", "a string")
				continue
			}
			ext[name] = s
		}
		if f := grant(ssh.Permissions{Extensions: ext}); f != nil {
			bad(key, entry, f)
		}
	}
	if v, ok := user["default_extensions"]; ok {
		checkExt("user.default_extensions", "", v)
	}
	if v, ok := user["group_extensions"]; ok {
		m, isMap := v.(map[string]any)
		if !isMap {
			shape("user.group_extensions", "an object of group -> extensions")
		}
		for _, g := range sortedKeys(v) {
			checkExt("user.group_extensions["+g+"]", g, m[g])
		}
	}
	if v, ok := host["group_patterns"]; ok {
		if _, isMap := v.(map[string]any); !isMap {
			shape("host.group_patterns", "an object of group -> list of host name patterns")
		}
		for _, g := range sortedKeys(v) {
			list, ok := stringList(v.(map[string]any)[g])
			if !ok {
				shape("host.group_patterns["+g+"]", "a list of host name patterns")
				continue
			}
			for _, p := range list {
				if why := hostPatternProblem(p); why != "" {
					errs = append(errs, fmt.Sprintf("host.group_patterns[%q]: %q: %s", g, p, why))
				}
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("data refused (the service would not sign what it grants):\n  %s", strings.Join(errs, "\n  "))
	}
	return nil
}

// hostPatternProblem says what is wrong with a host name pattern of host.group_patterns, or
// "". A pattern is a host name the service signs (ca.ValidHostPrincipal) in which whole or
// partial labels may be "*" (one DNS label: glob.match with "." as delimiter), except the last
// label, so a pattern never grants every name under a top-level domain, nor every name.
func hostPatternProblem(p string) string {
	if strings.ContainsAny(p, "?[]{}\\") {
		return "only '*' is a wildcard here"
	}
	if !strings.Contains(p, "*") {
		if !ca.ValidHostPrincipal(p) {
			return "not a lower-case host name (RFC 1123) or canonical IP address"
		}
		return ""
	}
	labels := strings.Split(p, ".")
	if strings.Contains(labels[len(labels)-1], "*") {
		return "the last label must be literal (\"*.dev.internal\", not \"*\" or \"web.*\")"
	}
	if !ca.ValidHostPrincipal(strings.ReplaceAll(p, "*", "x")) {
		return "with '*' read as one label, not a lower-case host name (RFC 1123)"
	}
	return ""
}

// checkDecisions runs the self-check's requests of the certificate kinds through e and passes
// every decision that allows a certificate through ca.CheckCertificateContent, as granted
// (before the Authority narrows it to a request: a policy that can grant a fault is refused).
func checkDecisions(ctx context.Context, e *Engine) error {
	for i, in := range checkInputs() {
		kind := ca.UserCert
		switch in.Kind {
		case ca.ActionUser:
		case ca.ActionHost, ca.ActionRenew:
			kind = ca.HostCert
		default:
			continue
		}
		d, err := e.Decide(ctx, in)
		if err != nil || !d.Allow || len(d.Principals) == 0 || d.TTL <= 0 {
			continue // denied at run time (no principal, no lifetime, or fails closed): no certificate
		}
		perms := ssh.Permissions{Extensions: d.Extensions, CriticalOptions: d.CriticalOptions}
		if f := ca.CheckCertificateContent(kind, d.Principals, d.TTL, perms, loadExtensions, loadCriticalOptions); f != nil {
			return fmt.Errorf("decisions refused: check request %d (%s) is allowed a certificate the service would not sign: %s", i, in.Kind, f.Reason())
		}
	}
	return nil
}

// sortedKeys are the keys of v when it is an object, sorted; nil otherwise.
func sortedKeys(v any) []string {
	m, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// stringList reads a JSON list of strings.
func stringList(v any) ([]string, bool) {
	l, ok := v.([]any)
	if !ok {
		return nil, false
	}
	out := make([]string, 0, len(l))
	for _, e := range l {
		s, ok := e.(string)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}
