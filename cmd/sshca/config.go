package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"gopkg.in/yaml.v3"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/policies"
	"github.com/sshca/sshca/services"
	"github.com/sshca/sshca/store"
	"github.com/sshca/sshca/ui"
)

// Config is the whole configuration of `sshca serve`, loaded from one YAML file and validated
// once at start with every problem reported together.
type Config struct {
	// Listen is the address of the HTTP(S) listener, e.g. "0.0.0.0:8443".
	Listen string    `yaml:"listen"`
	TLS    TLSConfig `yaml:"tls"`
	// BehindTLSProxy says a TLS-terminating proxy sits in front; the service then accepts
	// bearer tokens over plain HTTP on a non-loopback address, and takes the client address
	// from X-Forwarded-For only when the peer is one of TrustedProxies.
	BehindTLSProxy bool     `yaml:"behind_tls_proxy"`
	TrustedProxies []string `yaml:"trusted_proxies"`
	// DiagListen is the address of the diagnostics listener: plain HTTP with /metrics, /readyz
	// with every check and detail, and /healthz, for the platform's probes and scrapers and
	// not for the public (check errors name internal addresses). Default
	// DefaultDiagListen when the key is absent; "0.0.0.0:9850" lets a scraper in another pod
	// reach it. An explicit empty value turns it off: then /metrics and the /readyz details
	// stay on the public listener, as they were before it existed.
	DiagListen string `yaml:"diag_listen"`
	// DiagPprof serves Go's profiler (net/http/pprof) under /debug/pprof/ on the diagnostics
	// listener, for performance work (docs/performance.md: a CPU profile of serve under load).
	// Off by default: a profile shows the service's internals and costs CPU while it runs.
	// Requires diag_listen.
	DiagPprof bool `yaml:"diag_pprof"`

	// UserCA is the key that signs user certificates (hosts trust it in TrustedUserCAKeys).
	UserCA KeyConfig `yaml:"user_ca"`
	// HostCA is the key that signs host certificates (clients trust it with @cert-authority);
	// a different key from UserCA.
	HostCA KeyConfig `yaml:"host_ca"`

	// Redis holds all shared state: inventory, revocations, token ledger, keyring, audit log.
	Redis RedisConfig `yaml:"redis"`
	// Recordings is where the session recordings that bastion agents ship are kept: a Redis of
	// its own, so that no session's output can fill the one issuance and revocation depend on.
	// Without recordings.redis, POST and GET /v1/recordings are not served.
	Recordings RecordingsConfig `yaml:"recordings"`
	// OIDC are the identity providers whose ID tokens (people) and workload tokens (CI jobs,
	// hosts) are accepted.
	OIDC identity.Config `yaml:"oidc"`
	// Policy locates the Rego policy that decides every request (default: the embedded one).
	Policy PolicyConfig `yaml:"policy"`
	// Keyring turns on CA key rotation: the keys live in a keyring in Redis shared by all
	// replicas; user_ca and host_ca seed it on first start.
	Keyring KeyringConfig `yaml:"keyring"`
	// Login is published at /v1/login/config for `sshca login` (optional).
	Login *services.LoginConfig `yaml:"login"`
	// Console turns on the approvers' web console under /ui/ (README "For approvers"); it
	// signs in with Login's issuer and client.
	Console ConsoleConfig `yaml:"console"`
	// Limits are the hard caps no policy can lift, and the rate limits.
	Limits LimitsConfig `yaml:"limits"`
	// Audit configures the audit log's hash chain.
	Audit AuditConfig `yaml:"audit"`
	// Inventory configures how the inventory of live certificates is kept in Redis.
	Inventory InventoryConfig `yaml:"inventory"`
	// Notifications are the webhooks that hear of access requests.
	Notifications NotificationsConfig `yaml:"notifications"`

	// KnownHostsPattern is the host pattern of /v1/ca/known_hosts lines (default "*").
	KnownHostsPattern string `yaml:"known_hosts_pattern"`

	// RequestTimeout is every request's deadline (default 2s): a dependency that does not
	// answer within it is a 503. It must leave the HTTP server's write timeout room for a
	// signed certificate to be recorded and audited after it (2 × ca.SignedCertTimeout).
	RequestTimeout time.Duration `yaml:"request_timeout"`

	// ShutdownTimeout bounds the drain on SIGTERM or SIGINT (default 20s): once the listener
	// closed, requests in flight get this long to be answered; those still running then are
	// cut off, and their handlers get at most 5s more to end (a certificate signed just before
	// is still recorded). The background loops stop and Redis closes after it, so the
	// orchestrator's grace period (Kubernetes terminationGracePeriodSeconds, systemd
	// TimeoutStopSec) should exceed it by 10s. At most the HTTP write timeout (30s), past which no answer
	// could be written anyway.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// DefaultDiagListen is diag_listen when the configuration file does not name it: loopback, so
// nothing beyond the host reads the diagnostics unless the operator says so.
const DefaultDiagListen = "127.0.0.1:9850"

// requestTimeout is RequestTimeout or its default.
func (c *Config) requestTimeout() time.Duration { return c.withDefaults().RequestTimeout }

// ConsoleConfig is the approvers' web console (package ui).
type ConsoleConfig struct {
	// PublicURL is the server's base URL as browsers reach it, e.g. "https://ca.example.com"
	// (scheme and host, no path). Empty: no console. The identity provider must accept
	// PublicURL + "/ui/callback" as a redirect URI of login.client_id. Plain http:// only for a
	// loopback host.
	PublicURL string `yaml:"public_url"`
}

// TLSConfig is the main listener's TLS: TLS 1.2 or later only. Without cert_file the listener
// speaks plain HTTP (loopback, or behind_tls_proxy).
type TLSConfig struct {
	// CertFile is the server certificate chain (PEM, leaf first). It and KeyFile are re-read
	// when either changes, without a restart; a pair that does not load together (one file
	// replaced, the other not yet) is logged and the pair in force stays.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the private key of CertFile (PEM: PKCS#1, PKCS#8 or SEC 1).
	KeyFile string `yaml:"key_file"`
	// ClientCAFile is a PEM bundle of the CA certificates that issue admin client
	// certificates. When set, the admin endpoints (/v1/revocations, /v1/keys, GET /v1/certs,
	// approving and denying access requests, and the web console's approve, deny and revoke
	// actions) answer 403 unless the connection presented a
	// client certificate that verifies against it, in addition to the bearer token and the
	// policy; a certificate from another CA fails the TLS handshake. Other endpoints need none.
	// Requires cert_file. Read once at start.
	ClientCAFile string `yaml:"client_ca_file"`
}

// KeyConfig is a CA key: the KMS that holds it and the key within it, both as URIs, e.g.
// kms "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=ssh-ca?pin-source=/etc/sshca/pin"
// and key "pkcs11:id=7331;object=ssh-user-ca", or kms "softkms:" and key
// "softkms:path=/var/lib/sshca/user_ca.pem".
type KeyConfig struct {
	// KMS is the URI of the key management system: "softkms:" (key files), or a
	// "pkcs11:module-path=...;token=...?pin-source=FILE" URI for an HSM (select the token by
	// label, never by slot).
	KMS string `yaml:"kms"`
	// Key is the URI of the key within the KMS: "softkms:path=FILE" or
	// "pkcs11:id=...;object=...".
	Key string `yaml:"key"`
}

// RedisConfig maps onto go-redis UniversalOptions: one address is a single server, several are
// a Cluster, and master_name selects Sentinel.
type RedisConfig struct {
	// Addrs are host:port addresses: one for a single server, several for a Cluster, the
	// Sentinels' with MasterName.
	Addrs []string `yaml:"addrs"`
	// DB is the database number (single server and Sentinel only; default 0).
	DB int `yaml:"db"`
	// Username is the ACL user (deploy/redis/users.acl); Password or PasswordFile its password.
	Username string `yaml:"username"`
	// Password is the ACL user's password inline; prefer PasswordFile, which keeps it out of
	// the configuration (not both).
	Password string `yaml:"password"`
	// PasswordFile is a file holding the password (trailing newline ignored).
	PasswordFile string `yaml:"password_file"`
	// MasterName selects Sentinel: the name of the monitored master.
	MasterName string `yaml:"master_name"`
	// SentinelUsername and SentinelPassword authenticate to the Sentinels themselves.
	SentinelUsername string `yaml:"sentinel_username"`
	SentinelPassword string `yaml:"sentinel_password"`
	// ClusterMode forces Redis Cluster with a single address.
	ClusterMode bool `yaml:"cluster_mode"`
	// TLS connects to Redis over TLS 1.2 or later; CAFile is the PEM CA that issued the
	// server's certificate (default: the system's roots).
	TLS    bool   `yaml:"tls"`
	CAFile string `yaml:"ca_file"`
	// DialTimeout, ReadTimeout and WriteTimeout bound each Redis command; unset or longer than
	// request_timeout, they are request_timeout. A command is never sent twice: a late answer
	// is an unknown outcome (503).
	DialTimeout  time.Duration `yaml:"dial_timeout"`
	ReadTimeout  time.Duration `yaml:"read_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// PoolSize is the connection pool size per node (default: go-redis's, 10 per CPU).
	PoolSize int `yaml:"pool_size"`
	// WaitReplicas is how many replicas must confirm a revocation, an identity block, a lifted
	// ban or a keyring change (Redis WAIT) before sshca acknowledges it: the replicas that
	// Sentinel may promote (with master_name it is required, at least 1). Short of that
	// within wait_timeout, the change stays in force on the master and the answer is a 503
	// that says so. Issuance never waits (docs/scaling.md). Redis 7.0 replicas confirm what
	// they hold in memory, not on disk.
	WaitReplicas int `yaml:"wait_replicas"`
	// WaitTimeout bounds each wait for the replicas (default 1s; at most half of
	// request_timeout).
	WaitTimeout time.Duration `yaml:"wait_timeout"`
}

// StoreOptions are the store's options from the configuration (the replicas it waits for).
// InventoryConfig configures the inventory (who holds access now) in Redis.
type InventoryConfig struct {
	// Shards is the number of hash tags the inventory and the serial reservations are spread
	// over: 0 or 1 (the default) is one, {inventory}, whose writes all land on one master of a
	// Redis Cluster, so that adding masters adds no issuance capacity (docs/scaling.md). With
	// N, a certificate is kept in the shard of its identity ({inventory}, {inventory:1}, ...,
	// {inventory:N-1}), identity blocks are written into every shard, and readers walk every
	// shard ever used, so lowering it later loses nothing. The token ledger's generation mark,
	// bumped by every single-use token spent, is spread the same way ({tokens:i}).
	// Certificates go beyond the first shard only once the store is at layout 3, which `sshca
	// store migrate` sets once every CA replica runs this release: until then they are kept in
	// the first, where older replicas (which read no other) find them; a store that a replica
	// with shards above 1 creates starts at 3. On a single Redis or Sentinel it gains nothing.
	// At most 64. Every CA replica of a store must have the same number, since a serial is
	// reserved in the shard of the serial: the store records the first replica's, a replica
	// with another refuses to start (and, when the store's changes under it, answers 503 and
	// fails /readyz), and `sshca store migrate --inventory-shards N` changes it.
	Shards int `yaml:"shards"`
}

func (r RedisConfig) StoreOptions() store.RedisOptions {
	return store.RedisOptions{WaitReplicas: r.WaitReplicas, WaitTimeout: r.WaitTimeout}
}

// RecordingsConfig is the store of shipped session recordings and its caps.
type RecordingsConfig struct {
	// Redis is the recordings' own Redis, configured as redis is (ACL user with the keys
	// "sshca:rec:*"); none of its addresses may be one of redis.addrs. As for redis, serve
	// refuses at start one address that names a Cluster node without cluster_mode, or a
	// Sentinel without master_name. Give it a maxmemory with
	// noeviction: when it is full, batches are refused (503, the agent keeps them and retries)
	// and issuance goes on.
	Redis RedisConfig `yaml:"redis"`
	// SessionCap is the most bytes of recording lines kept per session (default 64 MiB),
	// HostCap per host over all its sessions still kept (default 4 GiB; a session's bytes
	// leave it with the session, at retention). Past a cap the CA keeps one line
	// that counts what it left out, and the session's end record says so.
	SessionCap int64 `yaml:"session_cap"`
	HostCap    int64 `yaml:"host_cap"`
	// Retention is how long a session's recording is kept after the last batch the CA
	// received of it (the one with its end, or its last line if it never ended), on the CA's
	// clock: default 90 days (2160h), at least 24h. Then its record and lines expire in Redis,
	// and it leaves the list and its host's total (pruned when a new session arrives, at most
	// once a minute per replica). There is no "forever": a store that only grows reaches its
	// maxmemory and then refuses every new recording; keep longer by setting a longer
	// retention and a maxmemory sized for it. The audit records of each session (start and
	// end: serial, key ID, commands, final hash) stay in the audit log, which has its own
	// archive, so a session whose recording is gone can still be accounted for.
	Retention time.Duration `yaml:"retention"`
}

// PolicyConfig locates the Rego policy. Empty Dir: the embedded default policy; DataFile
// replaces only the policy's data.
type PolicyConfig struct {
	// Dir is a directory of Rego files (and data.json), watched: a new version is tested
	// before it replaces the one in force.
	Dir string `yaml:"dir"`
	// DataFile is a JSON file that replaces the policy's data (groups, principals), with the
	// embedded Rego or with Dir.
	DataFile string `yaml:"data_file"`
	// BundleURL loads the policy from an OPA bundle server instead, polled every BundlePoll
	// (default 30s).
	BundleURL  string        `yaml:"bundle_url"`
	BundlePoll time.Duration `yaml:"bundle_poll"`
	// Evaluator is auto (default: the compiled plan where it runs the policy, else topdown),
	// compiled (refuse a policy its plan cannot run) or topdown (policies/plan/README.md).
	Evaluator string `yaml:"evaluator"`
}

// KeyringConfig configures CA key rotation.
type KeyringConfig struct {
	// Enabled turns the keyring and the /v1/keys endpoints on (sshca keys ...).
	Enabled bool `yaml:"enabled"`
	// KMS is where `sshca keys generate` creates keys; for softkms, KeyDir holds the files.
	KMS    string `yaml:"kms"`
	KeyDir string `yaml:"key_dir"`
	// TrustRefresh is how long a next key must be published before promote (default 15m):
	// at least the interval at which hosts and bastions refresh their trusted keys.
	TrustRefresh time.Duration `yaml:"trust_refresh"`
	// Refresh is how often each replica re-reads the keyring (default 2s).
	Refresh time.Duration `yaml:"refresh"`
}

// LimitsConfig are the hard caps no policy can lift.
type LimitsConfig struct {
	// MaxUserTTL is the longest user certificate, whatever the policy grants (default 24h;
	// the shipped policy grants at most 1h).
	MaxUserTTL time.Duration `yaml:"max_user_ttl"`
	// MaxHostTTL is the longest host certificate (default 7 days; the shipped policy grants
	// at most 24h).
	MaxHostTTL time.Duration `yaml:"max_host_ttl"`
	// MaxPrincipals is the most principals (or host names) in one certificate (default 32).
	MaxPrincipals int `yaml:"max_principals"`
	// IdentityBlock is how long revoking an identity refuses it new certificates (24h when
	// unset): long enough to disable the account at the identity provider.
	IdentityBlock time.Duration `yaml:"identity_block"`
	// AccessRequestTimeout is how long an access request waits for its approvals before it
	// expires (1h when unset); MaxAccessWindow the longest access an access request may ask
	// for (12h when unset), whatever the policy allows.
	AccessRequestTimeout time.Duration `yaml:"access_request_timeout"`
	MaxAccessWindow      time.Duration `yaml:"max_access_window"`
	// Rate are the request rate limits and in-flight bounds of each replica.
	Rate RateConfig `yaml:"rate"`
}

// RateConfig are the rate limits and in-flight bounds of one replica (services.RateLimits):
// they act per replica, so N replicas behind a load balancer allow N times these rates. Rates
// are requests per second (fractions allowed: 0.2 is one every 5 s), bursts and bounds are
// request counts; an unset (zero) value takes the default of services.DefaultRateLimits,
// shown in deploy/config.example.yaml.
type RateConfig struct {
	// PerAddress and Burst limit each source address (an IPv6 /64 counts as one) on the API
	// other than KRL pulls, checked before its token is verified.
	PerAddress float64 `yaml:"per_address"`
	Burst      int     `yaml:"burst"`
	// PerIdentity and IdentityBurst limit each identity's certificate requests, whatever
	// addresses it comes from.
	PerIdentity   float64 `yaml:"per_identity"`
	IdentityBurst int     `yaml:"identity_burst"`
	// KRLPerAddress and KRLBurst limit each source address on GET /v1/krl, /v1/krl/host and
	// /v1/ca/..., apart from the rest, so issuance load cannot starve revocation delivery.
	KRLPerAddress float64 `yaml:"krl_per_address"`
	KRLBurst      int     `yaml:"krl_burst"`
	// InFlight and KRLInFlight bound the requests a replica works on at once (API, KRL
	// pulls); beyond them requests are shed with 503 and Retry-After.
	InFlight    int `yaml:"in_flight"`
	KRLInFlight int `yaml:"krl_in_flight"`
	// LongPollsPerAddress bounds the long polls of GET /v1/krl (bastion agents in HTTPS mode
	// waiting for a change) and of GET /v1/requests/{id} (sshca request create waiting for a
	// decision) one source address holds open at once; more get 429. They hold no in-flight
	// slot.
	LongPollsPerAddress int `yaml:"long_polls_per_address"`
	// KRLLongPolls and RequestLongPolls bound the long polls of GET /v1/krl and of GET
	// /v1/requests/{id} one replica holds open at once, from all addresses together; more get
	// 503 with Retry-After (sshca_requests_limited_total{limit="krl_long_polls"} and
	// {limit="request_long_polls"}; sshca_long_polls_open{kind} shows how many are open). The
	// KRL default, 10000, lets one replica hold a fleet of 10,000 bastion agents in HTTPS mode
	// alone (about 1 GiB of memory and 11,000 file descriptors, docs/scaling.md); requests
	// default to 1000 (each reads Redis once a second while it waits).
	KRLLongPolls     int `yaml:"krl_long_polls"`
	RequestLongPolls int `yaml:"request_long_polls"`
	// MaxEntries bounds each limiter's map of addresses or identities (least recently seen
	// dropped first); Idle is how long an unused entry is kept.
	MaxEntries int           `yaml:"max_entries"`
	Idle       time.Duration `yaml:"idle"`
}

// rateLimits are the limits of c for services.NewRateLimiter (zero fields: defaults; the
// trusted proxies are the server's).
func (c RateConfig) rateLimits() services.RateLimits {
	return services.RateLimits{
		PerAddress: c.PerAddress, Burst: c.Burst, PerIdentity: c.PerIdentity, IdentityBurst: c.IdentityBurst,
		KRLPerAddress: c.KRLPerAddress, KRLBurst: c.KRLBurst, InFlight: c.InFlight, KRLInFlight: c.KRLInFlight,
		LongPollsPerAddress: c.LongPollsPerAddress, KRLLongPolls: c.KRLLongPolls, RequestLongPolls: c.RequestLongPolls,
		MaxEntries: c.MaxEntries, Idle: c.Idle,
	}
}

// validate reports each value out of range, naming its key under limits.rate.
func (c RateConfig) validate(add func(format string, args ...any)) {
	for _, f := range []struct {
		key string
		v   float64
	}{{"per_address", c.PerAddress}, {"per_identity", c.PerIdentity}, {"krl_per_address", c.KRLPerAddress}} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			add("limits.rate.%s: %v must be a positive number of requests per second (or unset for the default)", f.key, f.v)
		}
	}
	for _, f := range []struct {
		key string
		v   int
	}{{"burst", c.Burst}, {"identity_burst", c.IdentityBurst}, {"krl_burst", c.KRLBurst},
		{"in_flight", c.InFlight}, {"krl_in_flight", c.KRLInFlight}, {"long_polls_per_address", c.LongPollsPerAddress},
		{"krl_long_polls", c.KRLLongPolls}, {"request_long_polls", c.RequestLongPolls},
		{"max_entries", c.MaxEntries}} {
		if f.v < 0 {
			add("limits.rate.%s: %d must be a positive number of requests (or unset for the default)", f.key, f.v)
		}
	}
	if c.Idle < 0 {
		add("limits.rate.idle: %s must be a positive duration such as 10m (or unset for the default)", c.Idle)
	}
}

// LoadConfig reads and validates a YAML configuration file. Unknown keys are errors.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c := Config{DiagListen: DefaultDiagListen} // absent: the default; an explicit "" turns it off
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s has problems:\n%w", path, err)
	}
	return &c, nil
}

// Validate reports every problem at once, one per line.
func (c *Config) Validate() error { return c.validate(true) }

// validate is Validate; with secretFiles false it does not look at the files that hold key
// material or passwords (TLS certificate and key, redis.password_file, audit.key_file), which
// exist only where the service runs (sshca serve --check-config --offline).
func (c *Config) validate(secretFiles bool) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf("  - "+format, args...)) }

	host, _, err := net.SplitHostPort(c.Listen)
	if c.Listen == "" || err != nil {
		add("listen: %q is not a host:port address", c.Listen)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		add("tls: cert_file and key_file must be given together")
	}
	if c.TLS.ClientCAFile != "" {
		if c.TLS.CertFile == "" {
			add("tls.client_ca_file: client certificates need TLS on this listener; set tls.cert_file and tls.key_file")
		} else if _, err := loadCertPool(c.TLS.ClientCAFile); err != nil && secretFiles {
			add("tls.client_ca_file: %v", err)
		}
	}
	for _, f := range []string{c.TLS.CertFile, c.TLS.KeyFile} {
		if f != "" && secretFiles {
			if _, err := os.Stat(f); err != nil {
				add("tls: %v", err)
			}
		}
	}
	if err == nil && c.TLS.CertFile == "" && !c.BehindTLSProxy && !isLoopback(host) {
		add("listen: bearer tokens would travel over plain HTTP on %s; configure tls, or set behind_tls_proxy: true when a TLS-terminating proxy is in front", c.Listen)
	}
	if c.DiagPprof && c.DiagListen == "" {
		add("diag_pprof: needs diag_listen (the profiler is served on the diagnostics listener only); set diag_listen or remove diag_pprof")
	}
	if c.DiagListen != "" {
		if _, _, err := net.SplitHostPort(c.DiagListen); err != nil {
			add("diag_listen: %q is not a host:port address (e.g. %q)", c.DiagListen, DefaultDiagListen)
		} else if c.DiagListen == c.Listen {
			add("diag_listen: %q is also listen; the diagnostics need an address of their own", c.DiagListen)
		}
	}
	if len(c.TrustedProxies) > 0 && !c.BehindTLSProxy {
		add("trusted_proxies: only meaningful with behind_tls_proxy: true")
	}
	if _, err := c.trustedProxies(); err != nil {
		add("trusted_proxies: %v", err)
	}
	for _, ck := range []struct {
		name string
		k    KeyConfig
	}{{"user_ca", c.UserCA}, {"host_ca", c.HostCA}} {
		name, k := ck.name, ck.k
		if k.KMS == "" {
			add("%s.kms: required (e.g. \"softkms:\" or \"pkcs11:module-path=...;token=...\")", name)
		}
		if k.Key == "" {
			add("%s.key: required (e.g. \"softkms:path=/var/lib/sshca/%s.pem\" or \"pkcs11:id=...;object=...\")", name, name)
		}
	}
	if c.UserCA.Key != "" && c.UserCA == c.HostCA {
		add("user_ca and host_ca must be different keys")
	}
	if len(c.Redis.Addrs) == 0 {
		add("redis.addrs: at least one address is required")
	}
	validateRedis("redis", c.Redis, secretFiles, add)
	if rc := c.Recordings.Redis; len(rc.Addrs) > 0 {
		validateRedis("recordings.redis", rc, secretFiles, add)
		for i, a := range rc.Addrs {
			if slices.Contains(c.Redis.Addrs, a) {
				add("recordings.redis.addrs[%d]: also one of redis.addrs; recordings need a Redis of their own, so that a session's output cannot fill the one issuance and revocation use", i)
			}
		}
	}
	if c.Recordings.SessionCap < 0 || c.Recordings.HostCap < 0 {
		add("recordings: session_cap and host_cap are bytes, 0 (the default) or more")
	}
	if r := c.Recordings.Retention; r != 0 && r < minRecordingRetention {
		add("recordings.retention: %s: want at least %s (or unset for the default, %s): a session idle for longer would lose its recording while it runs",
			r, minRecordingRetention, defaultConfig().Recordings.Retention)
	}
	switch {
	case c.Redis.WaitReplicas < 0:
		add("redis.wait_replicas: must not be negative (the number of replicas Sentinel may promote)")
	case c.Redis.MasterName != "" && c.Redis.WaitReplicas == 0:
		add("redis.wait_replicas: required with master_name: set it to the number of replicas Sentinel may promote (at least 1), so that a failover cannot lose an acknowledged revocation")
	}
	if c.Inventory.Shards < 0 || c.Inventory.Shards > store.MaxInventoryShards {
		add("inventory.shards: %d: want 0 or 1 (one shard) up to %d; on a Redis Cluster set it to about the number of masters", c.Inventory.Shards, store.MaxInventoryShards)
	}
	if c.Audit.Stripes < 0 || c.Audit.Stripes > audit.MaxStripes {
		add("audit.stripes: %d: want 0 or 1 (one chain) up to %d; set it to at least the number of CA replicas", c.Audit.Stripes, audit.MaxStripes)
	}
	if c.Redis.WaitTimeout < 0 {
		add("redis.wait_timeout: must not be negative (e.g. 1s)")
	} else if rt := c.requestTimeout(); c.Redis.WaitTimeout > rt/2 {
		add("redis.wait_timeout: %s is more than half of request_timeout (%s): the 503 that says the replicas did not confirm must come back within the request's deadline", c.Redis.WaitTimeout, rt)
	}
	for _, e := range c.OIDC.Validate() {
		add("oidc: %v", e)
	}
	if c.Policy.Dir != "" {
		if st, err := os.Stat(c.Policy.Dir); err != nil || !st.IsDir() {
			add("policy.dir: %q is not a directory", c.Policy.Dir)
		}
	}
	if c.Policy.BundleURL != "" && (c.Policy.Dir != "" || c.Policy.DataFile != "") {
		add("policy: bundle_url replaces dir and data_file; give one or the other")
	}
	if _, err := policies.ParseEvaluator(c.Policy.Evaluator); err != nil {
		add("policy.evaluator: %q: want auto, compiled or topdown", c.Policy.Evaluator)
	}
	if c.Policy.DataFile != "" {
		if _, err := os.Stat(c.Policy.DataFile); err != nil {
			add("policy.data_file: %v", err)
		}
	}
	if c.Keyring.Enabled && c.Keyring.KMS == "" {
		add("keyring.kms: required with keyring.enabled (where new CA keys are created)")
	}
	if c.Keyring.Enabled && strings.HasPrefix(c.Keyring.KMS, "softkms:") && c.Keyring.KeyDir == "" {
		add("keyring.key_dir: required for softkms (where new CA key files go)")
	}
	if c.Login != nil && (c.Login.Issuer == "" || c.Login.ClientID == "") {
		add("login: issuer_url and client_id are required for sshca login")
	}
	if c.Console.PublicURL != "" {
		if c.Login == nil {
			add("console.public_url: the console signs in with login's issuer_url and client_id; set login too")
		} else if _, err := ui.ParsePublicURL(c.Console.PublicURL); err != nil {
			add("console.public_url: %v", err)
		}
	}
	if c.Audit.KeyFile != "" && secretFiles {
		if _, err := readAuditKey(c.Audit.KeyFile); err != nil {
			add("audit.key_file: %v", err)
		}
	}
	if c.RequestTimeout < 0 || c.RequestTimeout > 0 && c.RequestTimeout+2*ca.SignedCertTimeout >= httpWriteTimeout {
		add("request_timeout: %s must be positive and below the HTTP write timeout (%s) less twice the %s a signed certificate is given to be recorded and audited",
			c.RequestTimeout, httpWriteTimeout, ca.SignedCertTimeout)
	}
	if c.ShutdownTimeout < 0 || c.ShutdownTimeout > httpWriteTimeout {
		add("shutdown_timeout: %s must be positive and at most the HTTP write timeout (%s), past which no answer can be written; unset, it is %s",
			c.ShutdownTimeout, httpWriteTimeout, DefaultShutdownTimeout)
	}
	if c.Limits.MaxUserTTL < 0 || c.Limits.MaxHostTTL < 0 || c.Limits.MaxPrincipals < 0 || c.Limits.IdentityBlock < 0 ||
		c.Limits.AccessRequestTimeout < 0 || c.Limits.MaxAccessWindow < 0 {
		add("limits: values must not be negative")
	}
	c.Limits.Rate.validate(add)
	c.Notifications.validate(secretFiles, add)
	return errors.Join(errs...)
}

func (c *Config) trustedProxies() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.TrustedProxies {
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%q is not an address or CIDR", s)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or CIDR", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// validateRedis reports the problems of a Redis section named name.
func validateRedis(name string, r RedisConfig, secretFiles bool, add func(string, ...any)) {
	for i, a := range r.Addrs {
		// Not echoed: a URL here (redis://user:password@host) would carry its password into
		// this error, and go-redis would print it in every dial error, log line and /readyz.
		if _, _, err := net.SplitHostPort(a); err != nil || strings.ContainsAny(a, "@/") {
			add("%s.addrs[%d]: not a host:port address (give credentials in %s.username and %s.password_file, not in a URL)", name, i, name, name)
		}
	}
	if r.Password != "" && r.PasswordFile != "" {
		add("%s: give password or password_file, not both", name)
	}
	if r.PasswordFile != "" && secretFiles {
		if _, err := os.Stat(r.PasswordFile); err != nil {
			add("%s.password_file: %v", name, err)
		}
	}
	if r.CAFile != "" && !r.TLS {
		add("%s.ca_file: set tls: true to use it", name)
	}
}

// UniversalOptions turns the configuration into go-redis options.
func (r RedisConfig) UniversalOptions() (*redis.UniversalOptions, error) {
	o := &redis.UniversalOptions{
		Addrs: r.Addrs, DB: r.DB, Username: r.Username, Password: r.Password,
		MasterName: r.MasterName, SentinelUsername: r.SentinelUsername, SentinelPassword: r.SentinelPassword,
		IsClusterMode: r.ClusterMode, DialTimeout: r.DialTimeout, ReadTimeout: r.ReadTimeout,
		WriteTimeout: r.WriteTimeout, PoolSize: r.PoolSize,
	}
	if r.PasswordFile != "" {
		b, err := os.ReadFile(r.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("redis password_file: %w", err)
		}
		o.Password = strings.TrimSpace(string(b))
	}
	if r.TLS {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if r.CAFile != "" {
			pem, err := os.ReadFile(r.CAFile)
			if err != nil {
				return nil, fmt.Errorf("redis ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("redis ca_file %s: no PEM certificates", r.CAFile)
			}
			o.TLSConfig.RootCAs = pool
		}
	}
	return o, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
