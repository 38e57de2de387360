package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/bastion"
)

// agentStartupFlags name the recorded accounts whose start-up files the agent checks
// (issue 18 §1): sshd starts the recorder through the account's shell, which runs those files
// first, unrecorded.
type agentStartupFlags struct {
	groups, users []string
	every         time.Duration
	noWatch       bool
}

func addAgentStartupFlags(cmd *cobra.Command, f *agentStartupFlags) {
	cmd.Flags().StringSliceVar(&f.groups, "startup-check-group", nil, "check the start-up files (~/.bashrc, ~/.profile, ~/.ssh/rc, /etc/profile.d, ...) of this group's accounts: the groups whose sessions are recorded (sshd-config --record-group); repeatable")
	cmd.Flags().StringSliceVar(&f.users, "startup-check-user", nil, "check the start-up files of this account too (repeatable)")
	cmd.Flags().DurationVar(&f.every, "startup-check-every", time.Minute, "re-check interval of start-up files besides inotify")
	cmd.Flags().BoolVar(&f.noWatch, "startup-check-no-inotify", false, "re-check start-up files on the interval only (homes on NFS, where inotify misses other clients' changes)")
}

// agentStartupCheck is the check of f, or nil when it names no group or user.
func agentStartupCheck(f agentStartupFlags, log *slog.Logger) (*bastion.StartupCheck, error) {
	if len(f.groups) == 0 && len(f.users) == 0 {
		return nil, nil
	}
	if f.every < time.Second {
		return nil, fmt.Errorf("--startup-check-every %v: give at least 1s", f.every)
	}
	return &bastion.StartupCheck{Groups: f.groups, Users: f.users, Every: f.every, NoWatch: f.noWatch, Log: log}, nil
}

// startupHealth shows the check: every account that can change its start-up files is a
// /healthz problem (its recorded sessions may run what it put there, unrecorded).
type startupHealth struct{ c *bastion.StartupCheck }

func (s startupHealth) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_startup_unsafe", Help: "Start-up files of recorded accounts (path and account) that the account can change (--startup-check-group)."},
			func() float64 { return float64(len(s.c.Status().Unsafe)) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sshca_bastion_startup_changes_total", Help: "Changes to start-up files of recorded accounts seen since the agent started."},
			func() float64 { return float64(s.c.Status().Changes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sshca_bastion_startup_check_error", Help: "1 while a recorded group or user named to the start-up check is missing, or the account databases cannot be read."},
			func() float64 {
				if s.c.Status().Error != "" {
					return 1
				}
				return 0
			}),
	}
}

func (s startupHealth) health() (string, any, []string) {
	st := s.c.Status()
	return "startup_files", st, st.Problems()
}
