package bastion

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// DiscoverySent is what one scheduled report carried, for its log line and the agent's health.
type DiscoverySent struct {
	Host     string
	Keys     int // keys found in authorized_keys files
	Accounts int // accounts inspected
	Skipped  int // files that exist but were not read safely
	// Orders is how many keys the CA answered to disable (written for the disable unit, see
	// WriteDisableOrders); while some are pending the next report comes after FollowUp, so
	// the CA sees them gone soon.
	Orders int
}

// DiscoveryStatus is the schedule's state for /healthz and /metrics.
type DiscoveryStatus struct {
	Every     time.Duration
	LastSent  time.Time // last report the CA accepted
	LastError string    // of the last attempt; "" after a success
	Sent      uint64    // reports accepted since start
	Failed    uint64    // attempts that failed since start
	Next      time.Time // when the next attempt is due
}

// DiscoverySchedule runs discovery on the agent and ships each report like "sshca discover
// send" (issue 18 §2), so a host's report stays current without a cron job.
//
// The wait between reports is Every plus or minus up to Jitter, drawn uniformly each time,
// so that hosts started together (a fleet rebooted, an image rolled out) do not report in the
// same second; the first report waits only up to Jitter, so a new host is inventoried soon
// after it starts. A failed attempt is retried after RetryMin, doubling up to Every, rather
// than an interval later; a report answered with orders to disable keys is followed after
// FollowUp, so the CA sees them applied and ends the orders.
type DiscoverySchedule struct {
	Every    time.Duration // mean interval; required
	Jitter   time.Duration // default Every/10; at most Every/2
	RetryMin time.Duration // default 1 min (at most Every)
	FollowUp time.Duration // default 1 min (at most Every)
	// Send inventories the host and ships the report; ctx ends when Run's does.
	Send  func(context.Context) (DiscoverySent, error)
	Clock clockwork.Clock // default the real clock
	Log   *slog.Logger    // default discard
	Rand  func() float64  // uniform in [0, 1); default math/rand/v2
	// mu guards status, read by Status while Run writes it.
	mu     sync.Mutex
	status DiscoveryStatus
}

// Run sends reports until ctx ends, then returns nil. It returns an error only for a
// schedule it cannot run (no Every or Send).
func (s *DiscoverySchedule) Run(ctx context.Context) error {
	if s.Every <= 0 || s.Send == nil {
		return errors.New("bastion: discovery schedule: Every and Send are required")
	}
	clk, log, rnd := s.Clock, s.Log, s.Rand
	if clk == nil {
		clk = clockwork.NewRealClock()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if rnd == nil {
		rnd = rand.Float64
	}
	jitter := s.Jitter
	if jitter <= 0 {
		jitter = s.Every / 10
	}
	jitter = min(jitter, s.Every/2)
	retryMin, followUp := orDefault(s.RetryMin, time.Minute), orDefault(s.FollowUp, time.Minute)
	retryMin, followUp = min(retryMin, s.Every), min(followUp, s.Every)

	s.mu.Lock()
	s.status.Every = s.Every
	s.mu.Unlock()
	wait := time.Duration(rnd() * float64(jitter))
	retry := retryMin
	for {
		s.setNext(clk.Now().Add(wait))
		log.Info("discovery: next report", "in", wait.Round(time.Second).String())
		select {
		case <-ctx.Done():
			return nil
		case <-clk.After(wait):
		}
		start := clk.Now()
		sent, err := s.Send(ctx)
		if ctx.Err() != nil {
			return nil
		}
		took := clk.Now().Sub(start)
		s.mu.Lock()
		if err != nil {
			s.status.Failed++
			s.status.LastError = err.Error()
		} else {
			s.status.Sent++
			s.status.LastError = ""
			s.status.LastSent = clk.Now()
		}
		s.mu.Unlock()
		switch {
		case err != nil:
			wait = retry
			retry = min(2*retry, s.Every)
			log.Warn("discovery: report not sent; retrying", "err", err, "took", took, "retry_in", wait.String())
			continue
		case sent.Orders > 0:
			wait = followUp
		default:
			wait = s.Every + time.Duration((2*rnd()-1)*float64(jitter))
		}
		retry = retryMin
		log.Info("discovery: report sent", "host", sent.Host, "keys", sent.Keys, "accounts", sent.Accounts,
			"skipped", sent.Skipped, "disable_orders", sent.Orders, "took", took)
	}
}

// Status is the schedule's state now.
func (s *DiscoverySchedule) Status() DiscoveryStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *DiscoverySchedule) setNext(t time.Time) {
	s.mu.Lock()
	s.status.Next = t
	s.mu.Unlock()
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
