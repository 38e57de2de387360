package bastion

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// DriftCheck is the agent's check of sshd's effective configuration against the hardened
// baseline: a Match block appended to sshd_config, a drop-in an Include reads, or an edit can
// loosen what sshd enforces without anyone noticing; sshd -T -C shows it per connection.
type DriftCheck struct {
	SSHD     SSHDEffective
	Baseline SSHDBaseline // what every connection must get; see Baseline
	// Accounts are local users to check besides root and those with a principals file.
	Accounts []string
	// Every is how often to check (default 1 min); the first check runs at start.
	Every time.Duration
}

// DriftReport is one check's outcome.
type DriftReport struct {
	// Drift lists each value that differs, as "CONNECTION: keyword VALUE, want WANT" with
	// CONNECTION the sshd -C spec (or "global"), sorted.
	Drift []string
	// Unchecked lists Match criteria no derived connection satisfies (a Group without
	// members): their blocks are not covered.
	Unchecked []string
	// Connections is how many connection specs were checked.
	Connections int
}

// Check runs sshd -T once globally and once per derived connection and compares each with the
// baseline. An error means sshd could not print its configuration (sshd would not start
// with it either).
func (d DriftCheck) Check(ctx context.Context) (DriftReport, error) {
	var r DriftReport
	global, err := d.SSHD.Read(ctx, nil)
	if err != nil {
		return r, err
	}
	accounts := append(Accounts(global.Get("authorizedprincipalsfile")), d.Accounts...)
	conns, unmet, err := d.SSHD.Connections(accounts)
	if err != nil {
		return r, err
	}
	r.Unchecked = unmet
	keys := make([]string, 0, len(d.Baseline))
	for k := range d.Baseline {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	compare := func(name string, eff EffectiveConfig) {
		for _, k := range keys {
			if got, want := eff.Get(k), d.Baseline[k]; got != want {
				if got == "" {
					got = "(not printed)"
				}
				r.Drift = append(r.Drift, fmt.Sprintf("%s: %s %s, want %s", name, k, strings.ReplaceAll(got, "\n", " "), want))
			}
		}
	}
	compare("global", global)
	for _, c := range conns {
		eff, err := d.SSHD.Read(ctx, &c)
		if err != nil {
			return r, err
		}
		compare(c.String(), eff)
	}
	r.Connections = len(conns)
	return r, nil
}

// followDrift checks sshd's effective configuration every d.Every (on the agent's clock) until
// ctx ends and records each outcome in Status.
func (a *Agent) followDrift(ctx context.Context, d *DriftCheck) {
	every := d.Every
	if every == 0 {
		every = time.Minute
	}
	t := a.o.Clock.NewTicker(every)
	defer t.Stop()
	for {
		r, err := d.Check(ctx)
		if ctx.Err() != nil {
			return
		}
		a.mu.Lock()
		was := len(a.status.SSHDDrift)
		a.status.SSHDDrift, a.status.SSHDUnchecked, a.status.SSHDCheckError = r.Drift, r.Unchecked, ""
		a.status.ConfigDrift = len(r.Drift)
		if err != nil {
			a.status.SSHDCheckError = err.Error()
		}
		a.status.SSHDChecked = a.o.Clock.Now()
		a.mu.Unlock()
		switch {
		case err != nil:
			a.o.Log.Error("cannot read sshd's effective configuration", "err", err)
		case len(r.Drift) > 0:
			a.o.Log.Error("sshd's effective configuration differs from the baseline", "values", len(r.Drift), "first", r.Drift[0], "connections", r.Connections)
		case was > 0:
			a.o.Log.Info("sshd's effective configuration matches the baseline again", "connections", r.Connections)
		}
		if len(r.Unchecked) > 0 {
			a.o.Log.Warn("Match blocks no connection spec could reach were not checked", "criteria", r.Unchecked)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
		}
	}
}
