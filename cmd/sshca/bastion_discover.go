package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/sshca/sshca/bastion"
)

// agentDiscoverFlags turn on the agent's scheduled discovery (issue 18 §2): every
// --discover-every (jittered) it inventories the host and reports like "sshca discover send",
// and hands the CA's disable orders to the disable unit through --discover-orders.
type agentDiscoverFlags struct {
	on                         bool
	every                      time.Duration
	hostKey, hostCert, host    string
	passwd, orders, orderState string
}

func addAgentDiscoverFlags(cmd *cobra.Command, f *agentDiscoverFlags) {
	cmd.Flags().BoolVar(&f.on, "discover", false, "report this host's long-lived keys to --server on a schedule (as sshca discover send)")
	cmd.Flags().DurationVar(&f.every, "discover-every", DefaultDiscoverEvery, "mean interval between discovery reports (each wait ± a tenth, at random)")
	cmd.Flags().StringVar(&f.hostKey, "discover-host-key", "/etc/ssh/ssh_host_ed25519_key", "the host key that signs discovery reports")
	cmd.Flags().StringVar(&f.hostCert, "discover-host-cert", "", "its host certificate (default: --discover-host-key + -cert.pub)")
	cmd.Flags().StringVar(&f.host, "discover-host", "", "the host name to report under, one of the certificate's (default: its first)")
	cmd.Flags().StringVar(&f.passwd, "discover-passwd", "/etc/passwd", "the password database discovery reads")
	cmd.Flags().StringVar(&f.orders, "discover-orders", DefaultDiscoverOrders, "file the agent writes the CA's disable orders to, for sshca-discover-disable.service (sshca discover apply)")
}

// agentDiscovery is the schedule of f, or nil when --discover is off. Its reports go to
// --server, over TLS pinned to --server-ca when given.
func agentDiscovery(f agentFlags, log *slog.Logger) (*bastion.DiscoverySchedule, error) {
	d := f.discover
	if !d.on {
		return nil, nil
	}
	if f.server == "" {
		return nil, errors.New("--discover: give --server, the CA the reports go to")
	}
	if d.every < time.Minute {
		return nil, fmt.Errorf("--discover-every %v: give at least 1m (each report reads every account's authorized_keys)", d.every)
	}
	var hc *http.Client
	if f.serverCA != "" {
		conf, err := clientTLS(f.serverCA, "", "")
		if err != nil {
			return nil, fmt.Errorf("--server-ca: %w", err)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = conf
		hc = &http.Client{Transport: t}
	}
	sf := discoverSendFlags{server: f.server, hostKey: d.hostKey, hostCert: d.hostCert, host: d.host,
		sshdConfig: f.sshdConfig, sshdLog: f.sshdLog, passwd: d.passwd}
	if sf.sshdConfig == "" {
		sf.sshdConfig = "/etc/ssh/sshd_config"
	}
	send := func(ctx context.Context) (bastion.DiscoverySent, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if hc != nil {
			ctx = context.WithValue(ctx, httpClientKey{}, hc)
		}
		orders, rep, err := discoverSendOnce(ctx, io.Discard, sf)
		if err != nil {
			return bastion.DiscoverySent{}, err
		}
		sent := bastion.DiscoverySent{Host: rep.Host, Keys: len(rep.Keys), Accounts: rep.Accounts, Skipped: len(rep.Skipped), Orders: len(orders)}
		// The agent sees homes read-only and cannot take another uid: the disable unit, started
		// by a path unit when this file changes, applies the orders.
		wrote, err := bastion.WriteDisableOrders(d.orders, bastion.DisableOrders{Host: rep.Host, Fingerprints: orders, Received: time.Now().UTC()})
		if err != nil {
			return sent, err
		}
		if wrote && len(orders) > 0 {
			log.Warn("discovery: the CA orders keys disabled; handed to sshca-discover-disable.service", "orders", d.orders, "fingerprints", orders)
		}
		return sent, nil
	}
	return &bastion.DiscoverySchedule{Every: d.every, Send: send, Log: log}, nil
}
