package main

import (
	"time"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/services"
)

// defaultConfig is every limit, timeout and interval the server takes when the configuration
// leaves it unset: the one place serve reads them from. The domain's caps come from the
// packages that enforce them (ca.DefaultLimits, ca.DefaultAccessRequestLimits,
// services.DefaultRateLimits, services.DefaultRequestTimeout) so that a package used on its
// own applies the same values; deploy/config.example.yaml and the README show these values
// (TestDocumentedDefaults).
func defaultConfig() Config {
	l, al, r := ca.DefaultLimits, ca.DefaultAccessRequestLimits, services.DefaultRateLimits
	return Config{
		DiagListen:     DefaultDiagListen,
		RequestTimeout: services.DefaultRequestTimeout,
		Policy:         PolicyConfig{BundlePoll: 30 * time.Second},
		// Long enough to look into an incident found weeks later; a store that only grows
		// fills and then refuses recordings (RecordingsConfig.Retention).
		Recordings: RecordingsConfig{Retention: 90 * 24 * time.Hour},
		Keyring: KeyringConfig{
			// At least the interval at which hosts and bastions refresh their trusted keys.
			TrustRefresh: 15 * time.Minute,
			Refresh:      2 * time.Second,
		},
		Limits: LimitsConfig{
			MaxUserTTL: l.MaxUserTTL, MaxHostTTL: l.MaxHostTTL, MaxPrincipals: l.MaxPrincipals, IdentityBlock: l.IdentityBlock,
			AccessRequestTimeout: al.PendingTimeout, MaxAccessWindow: al.MaxWindow,
			Rate: RateConfig{PerAddress: r.PerAddress, Burst: r.Burst, PerIdentity: r.PerIdentity, IdentityBurst: r.IdentityBurst,
				KRLPerAddress: r.KRLPerAddress, KRLBurst: r.KRLBurst, InFlight: r.InFlight, KRLInFlight: r.KRLInFlight,
				LongPollsPerAddress: r.LongPollsPerAddress, KRLLongPolls: r.KRLLongPolls, RequestLongPolls: r.RequestLongPolls,
				MaxEntries: r.MaxEntries, Idle: r.Idle},
		},
	}
}

// withDefaults is c with every unset (zero or negative) limit, timeout and interval taken
// from defaultConfig; diag_listen is left as it is, since "" turns the diagnostics listener
// off (LoadConfig starts from DefaultDiagListen).
func (c Config) withDefaults() Config {
	d := defaultConfig()
	def(&c.RequestTimeout, d.RequestTimeout)
	def(&c.Policy.BundlePoll, d.Policy.BundlePoll)
	def(&c.Recordings.Retention, d.Recordings.Retention)
	def(&c.Keyring.TrustRefresh, d.Keyring.TrustRefresh)
	def(&c.Keyring.Refresh, d.Keyring.Refresh)
	l, dl := &c.Limits, d.Limits
	def(&l.MaxUserTTL, dl.MaxUserTTL)
	def(&l.MaxHostTTL, dl.MaxHostTTL)
	def(&l.MaxPrincipals, dl.MaxPrincipals)
	def(&l.IdentityBlock, dl.IdentityBlock)
	def(&l.AccessRequestTimeout, dl.AccessRequestTimeout)
	def(&l.MaxAccessWindow, dl.MaxAccessWindow)
	r, dr := &l.Rate, dl.Rate
	def(&r.PerAddress, dr.PerAddress)
	def(&r.Burst, dr.Burst)
	def(&r.PerIdentity, dr.PerIdentity)
	def(&r.IdentityBurst, dr.IdentityBurst)
	def(&r.KRLPerAddress, dr.KRLPerAddress)
	def(&r.KRLBurst, dr.KRLBurst)
	def(&r.InFlight, dr.InFlight)
	def(&r.KRLInFlight, dr.KRLInFlight)
	def(&r.LongPollsPerAddress, dr.LongPollsPerAddress)
	def(&r.KRLLongPolls, dr.KRLLongPolls)
	def(&r.RequestLongPolls, dr.RequestLongPolls)
	def(&r.MaxEntries, dr.MaxEntries)
	def(&r.Idle, dr.Idle)
	return c
}

// def sets *v to d when *v is unset (zero or negative).
func def[T int | float64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// minRecordingRetention is the shortest recordings.retention: a recording's keys expire that
// long after its last batch, so a session quiet for longer would lose its recording while it
// still runs.
const minRecordingRetention = 24 * time.Hour

// DefaultDiscoverEvery is the bastion agent's mean interval between discovery reports
// (--discover-every; each wait is drawn within ± a tenth of it). An hour keeps "last accepted"
// and newly planted keys at most about an hour old at the CA for one small request per host;
// a report reads every account's authorized_keys (bounded: 10 000 accounts, 1 MiB a file).
const DefaultDiscoverEvery = time.Hour

// DefaultDiscoverOrders is where the agent writes the CA's disable orders for
// sshca-discover-disable.service: in the agent's own directory, the one path it may write.
const DefaultDiscoverOrders = "/etc/ssh/sshca/discover/orders.json"

// DefaultShutdownTimeout is shutdown_timeout when the configuration leaves it unset: how long
// the requests in flight at SIGTERM get to be answered. Every request has its deadline
// (request_timeout, 2 s) plus the seconds a signed certificate gets to be recorded, and the
// long polls of /v1/krl answer as soon as shutdown begins, so a drain normally takes a few
// seconds; the bound leaves Kubernetes' default grace period of 30 s (deploy/kubernetes) room
// to stop the loops and close Redis after it.
const DefaultShutdownTimeout = 20 * time.Second
