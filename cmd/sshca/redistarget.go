package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// redisTarget is how a command other than serve reaches the store: the same RedisConfig that
// serve's redis: section is, so the same go-redis UniversalOptions and client kinds (one
// server, a Cluster, Sentinel). It comes either from --config FILE (serve's configuration:
// its redis: section, password_file, TLS and Sentinel credentials as serve reads them) or
// from --redis URL with --cluster or --sentinel-master NAME. A plain URL that names a Cluster
// node or a Sentinel is refused (checkMode): a single-server client there reads one master's
// share of the keys, or none, and would report on that part as if it were the whole.
type redisTarget struct {
	// prefix starts every flag's name ("" or "audit-" for sshca sessions verify).
	prefix string
	// url is --redis: redis[s]://user:password@host:port/db; for a Cluster any node, for
	// Sentinel one Sentinel (the user and password are the data nodes').
	url    string
	urlSet bool
	// cluster is --cluster: the store is a Redis Cluster and url names one of its nodes.
	cluster bool
	// sentinelMaster is --sentinel-master: the store is behind Sentinel, url names a Sentinel.
	sentinelMaster string
	// sentinelUsername is --sentinel-username and sentinelPasswordFile --sentinel-password-file:
	// the Sentinels' own ACL user and a file holding their password (redis.sentinel_username
	// and sentinel_password), distinct from the data nodes' user and password in url. The
	// password may come from the environment instead (SSHCA_SENTINEL_PASSWORD, unprefixed
	// flags only): never a flag's value, which ps shows.
	sentinelUsername     string
	sentinelPasswordFile string
	// configFile is --config: serve's configuration file, whose redis: section is used.
	configFile string
	// name, when set, names the source in messages instead of the flag (serve: "config").
	name string
	// section is the configuration key of the Redis a --config or serve's configuration
	// describes, named in messages that say what to set: "redis" (the default) or serve's
	// "recordings.redis".
	section string
}

// addRedisTargetFlags declares t's flags on fs; what says what the store is to the command
// (e.g. "of the store", "with read-only credentials").
func addRedisTargetFlags(fs *pflag.FlagSet, t *redisTarget, prefix, what string) {
	t.prefix = prefix
	// The environment names the store of the unprefixed flags alone: a second store (the
	// CA's, to a recordings command) is never taken from it by mistake.
	def, env := "", "env not read"
	if prefix == "" {
		def, env = os.Getenv("SSHCA_REDIS_URL"), "env SSHCA_REDIS_URL"
	}
	fs.StringVar(&t.url, prefix+"redis", def, "redis://user:password@host:port/db "+what+" ("+env+"); with --"+prefix+"cluster any Cluster node, with --"+prefix+"sentinel-master a Sentinel")
	fs.BoolVar(&t.cluster, prefix+"cluster", false, "the store is a Redis Cluster and --"+prefix+"redis names one of its nodes")
	fs.StringVar(&t.sentinelMaster, prefix+"sentinel-master", "", "the store is behind Sentinel: the monitored master's name (redis.master_name); --"+prefix+"redis names a Sentinel")
	sentinelEnv := ""
	if prefix == "" {
		sentinelEnv = "; or env " + sentinelPasswordEnv
	}
	fs.StringVar(&t.sentinelUsername, prefix+"sentinel-username", "", "with --"+prefix+"sentinel-master: the Sentinels' own ACL user (redis.sentinel_username), when they require one")
	fs.StringVar(&t.sentinelPasswordFile, prefix+"sentinel-password-file", "", "with --"+prefix+"sentinel-master: a file holding the Sentinels' own password (redis.sentinel_password; not the data nodes' of --"+prefix+"redis)"+sentinelEnv)
	fs.StringVar(&t.configFile, prefix+"config", "", "reach the store as sshca serve does: the redis: section of this serve configuration file (instead of --"+prefix+"redis)")
}

// sentinelPasswordEnv names the environment variable that holds the Sentinels' own password
// for commands given --sentinel-master (the unprefixed flags only, as SSHCA_REDIS_URL).
const sentinelPasswordEnv = "SSHCA_SENTINEL_PASSWORD"

// given says whether the command was told where the store is.
func (t *redisTarget) given() bool { return t.url != "" || t.configFile != "" }

// flag is the name of the flag that names the store, for messages.
func (t *redisTarget) flag() string {
	if t.name != "" {
		return t.name
	}
	if t.configFile != "" {
		return "--" + t.prefix + "config"
	}
	return "--" + t.prefix + "redis"
}

// resolve returns the RedisConfig t names. Errors name the flag and never carry the URL (it
// may hold a password).
func (t *redisTarget) resolve(fs *pflag.FlagSet) (RedisConfig, error) {
	p := "--" + t.prefix
	switch {
	case fs != nil:
		t.urlSet = fs.Changed(t.prefix + "redis")
	case t.prefix != "": // no environment default: a URL was given
		t.urlSet = t.url != ""
	}
	if t.cluster && t.sentinelMaster != "" {
		return RedisConfig{}, fmt.Errorf("%scluster and %ssentinel-master: give one (a Cluster or a Sentinel deployment)", p, p)
	}
	if t.configFile != "" {
		if t.urlSet || t.cluster || t.sentinelMaster != "" || t.sentinelUsername != "" || t.sentinelPasswordFile != "" {
			return RedisConfig{}, fmt.Errorf("%sconfig: give it alone, without %sredis, %scluster, %ssentinel-master or the Sentinels' credentials (its redis: section says all of it)", p, p, p, p)
		}
		rc, err := loadRedisSection(t.configFile)
		if err != nil {
			return RedisConfig{}, fmt.Errorf("%sconfig: %w", p, err)
		}
		return rc, nil
	}
	if t.url == "" {
		return RedisConfig{}, fmt.Errorf("%sredis URL or %sconfig FILE is required", p, p)
	}
	o, err := parseRedisURL(t.url) // errors never echo the URL: it may hold a password
	if err != nil {
		return RedisConfig{}, fmt.Errorf("%sredis: %w", p, err)
	}
	rc := RedisConfig{Addrs: []string{o.Addr}, DB: o.DB, Username: o.Username, Password: o.Password,
		MasterName: t.sentinelMaster, ClusterMode: t.cluster,
		DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, PoolSize: o.PoolSize}
	if t.cluster && o.DB != 0 {
		return RedisConfig{}, fmt.Errorf("%sredis: a Redis Cluster has database 0 alone; drop the /%d from the URL", p, o.DB)
	}
	if o.TLSConfig != nil {
		rc.TLS = true
	}
	if rc.SentinelUsername, rc.SentinelPassword, err = t.sentinelCredentials(); err != nil {
		return RedisConfig{}, err
	}
	return rc, nil
}

// sentinelCredentials are the Sentinels' own user and password: --sentinel-username, and the
// password from --sentinel-password-file or else the environment (unprefixed flags only).
// Given without --sentinel-master they are an error: there is no Sentinel to give them to. The
// password is never part of an error.
func (t *redisTarget) sentinelCredentials() (user, password string, err error) {
	p := "--" + t.prefix
	if t.sentinelMaster == "" {
		if t.sentinelUsername != "" || t.sentinelPasswordFile != "" {
			return "", "", fmt.Errorf("%ssentinel-username and %ssentinel-password-file are the Sentinels' own credentials: give them with %ssentinel-master NAME", p, p, p)
		}
		return "", "", nil
	}
	if t.sentinelPasswordFile != "" {
		b, err := os.ReadFile(t.sentinelPasswordFile)
		if err != nil {
			return "", "", fmt.Errorf("%ssentinel-password-file: %w", p, err)
		}
		password = strings.TrimRight(string(b), "\r\n")
		if password == "" {
			return "", "", fmt.Errorf("%ssentinel-password-file %s: empty; put the Sentinels' password in it (requirepass of each Sentinel)", p, t.sentinelPasswordFile)
		}
	} else if t.prefix == "" {
		password = os.Getenv(sentinelPasswordEnv)
	}
	return t.sentinelUsername, password, nil
}

// loadRedisSection reads serve's configuration file as serve does (unknown keys are errors)
// and checks its redis: section alone: an operator's copy of the file may name KMS keys and
// TLS files that exist only where serve runs.
func loadRedisSection(path string) (RedisConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return RedisConfig{}, err
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return RedisConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	var problems []string
	validateRedis("redis", c.Redis, true, func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) })
	if len(c.Redis.Addrs) == 0 {
		problems = append(problems, "redis.addrs: give the store's addresses (host:port)")
	}
	if len(problems) > 0 {
		return RedisConfig{}, fmt.Errorf("%s: %s", path, strings.Join(problems, "; "))
	}
	return c.Redis, nil
}

// open builds the client of the store t names, bounded as redisBounds says with d as the
// deadline of one call, and checks that the deployment is the kind t says (checkMode). tune,
// when not nil, adjusts the options before the client is made (the bastion's pool). unasked,
// when not nil, receives the error of a server that could not be asked what it is (down,
// unreachable), and the client is returned all the same: the bastion agent starts without its
// Redis and keeps its last KRL; a command that reads passes nil and stops.
func (t *redisTarget) open(ctx context.Context, fs *pflag.FlagSet, d time.Duration, tune func(*redis.UniversalOptions), unasked func(error)) (redis.UniversalClient, error) {
	rc, err := t.resolve(fs)
	if err != nil {
		return nil, err
	}
	opts, err := rc.UniversalOptions()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.flag(), err)
	}
	// A rediss:// URL keeps its own TLS settings (ServerName from the URL's host).
	if t.configFile == "" {
		if o, _ := parseRedisURL(t.url); o != nil && o.TLSConfig != nil {
			opts.TLSConfig = o.TLSConfig
		}
	}
	newRedisBounds(d, rc.DialTimeout, rc.ReadTimeout, rc.WriteTimeout).universal(opts)
	if tune != nil {
		tune(opts)
	}
	rdb := newUniversalClient(opts)
	if err := t.checkSentinelAuth(ctx, rdb, rc, d); err != nil {
		rdb.Close()
		return nil, err
	}
	if err := t.checkMode(ctx, rdb, rc); err != nil {
		var u *modeUnknownError
		if unasked != nil && errors.As(err, &u) {
			unasked(err)
			return rdb, nil
		}
		rdb.Close()
		return nil, err
	}
	return rdb, nil
}

// checkMode refuses a single-server client that reached a Cluster node or a Sentinel: it
// would read one master's keys (and get MOVED for the others) or nothing, and a command that
// verifies or rebuilds would call that part the whole. It asks the server what it is with
// HELLO 3 (the connection's protocol is kept; allowed to every user with @connection; its
// reply's "mode" is standalone, cluster or sentinel), else INFO server (redis_mode). A server that answers neither is
// refused too: the command cannot tell what it would read.
func (t *redisTarget) checkMode(ctx context.Context, rdb redis.UniversalClient, rc RedisConfig) error {
	if rc.MasterName != "" || rc.ClusterMode || len(rc.Addrs) > 1 {
		// go-redis's Sentinel and Cluster clients find the master and route by slot; a
		// wrong kind fails on its own (a Cluster client against a plain server: "cluster
		// support disabled", a Sentinel client against a server: no such master).
		return nil
	}
	mode, err := redisMode(ctx, rdb)
	if err != nil {
		return &modeUnknownError{fmt.Errorf("%s: cannot tell whether the server is a single Redis, a Cluster node or a Sentinel: %w", t.flag(), err)}
	}
	p := "--" + t.prefix
	sec := t.section
	if sec == "" {
		sec = "redis"
	}
	switch mode {
	case "standalone":
		return nil
	case "cluster":
		if t.configFile != "" || t.name != "" {
			return fmt.Errorf("%s: %s.addrs names a node of a Redis Cluster: set %s.cluster_mode: true (or list every master in %s.addrs); a single-server client would read one master's share of the store", t.flag(), sec, sec, sec)
		}
		return fmt.Errorf("%sredis names a node of a Redis Cluster: add %scluster; a single-server client would read one master's share of the store", p, p)
	case "sentinel":
		if t.configFile != "" || t.name != "" {
			return fmt.Errorf("%s: %s.addrs names a Sentinel: set %s.master_name to the monitored master's name", t.flag(), sec, sec)
		}
		return fmt.Errorf("%sredis names a Sentinel: add %ssentinel-master NAME (the monitored master's name)", p, p)
	}
	return fmt.Errorf("%s: the server says its mode is %q: want standalone, cluster or sentinel", t.flag(), mode)
}

// checkSentinelAuth asks the Sentinels for the master once (a PING through them) and turns
// their refusal of this command's credentials into an error that says where to give their own
// password: go-redis answers "all sentinels ... are unreachable: NOAUTH" (or WRONGPASS),
// which reads like an outage. Any other failure is left to the command, as before (the
// bastion agent starts without its Redis). The password is never in the error: the servers'
// refusals do not repeat it.
func (t *redisTarget) checkSentinelAuth(ctx context.Context, rdb redis.UniversalClient, rc RedisConfig, d time.Duration) error {
	if rc.MasterName == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	err := rdb.Ping(ctx).Err()
	if !sentinelsRefused(err) {
		return nil
	}
	if t.configFile != "" || t.name != "" {
		sec := t.section
		if sec == "" {
			sec = "redis"
		}
		return sentinelsRefusedConfig(t.flag(), sec, err)
	}
	p := "--" + t.prefix
	where := p + "sentinel-password-file FILE"
	if t.prefix == "" {
		where = sentinelPasswordEnv + " or " + where
	}
	return fmt.Errorf("%ssentinel-master: the Sentinels refused this command's credentials for them (%v): give the Sentinels' own password with %s (and %ssentinel-username when they use an ACL user); the user and password of %sredis are the data nodes'", p, err, where, p, p)
}

// sentinelsRefused says that err is go-redis's answer when every Sentinel refused the
// credentials given for them ("redis: all sentinels specified in configuration are
// unreachable: NOAUTH ..." or WRONGPASS), not an outage.
func sentinelsRefused(err error) bool {
	return err != nil && strings.Contains(err.Error(), "sentinels") &&
		(strings.Contains(err.Error(), "NOAUTH") || strings.Contains(err.Error(), "WRONGPASS") || strings.Contains(err.Error(), "invalid password"))
}

// sentinelsRefusedConfig is the error for the Sentinels' refusal (sentinelsRefused) of the
// credentials of the configuration section sec, for where (a flag, a file, "config"). The
// password is not in it: the servers' refusals do not repeat it.
func sentinelsRefusedConfig(where, sec string, err error) error {
	return fmt.Errorf("%s: the Sentinels refused their credentials (%v): set %s.sentinel_password (and %s.sentinel_username when they use an ACL user) to the Sentinels' own, not the data nodes'", where, err, sec, sec)
}

// redisMode is the server's mode (standalone, cluster, sentinel) from HELLO, or from INFO
// server when HELLO is refused.
func redisMode(ctx context.Context, rdb redis.UniversalClient) (string, error) {
	// HELLO 3: the protocol go-redis speaks already (it sends HELLO 3 when it connects), so the
	// connection stays as it was; servers that want the version argument (miniredis, under
	// sshca dev) answer it too.
	v, herr := rdb.Do(ctx, "HELLO", 3).Result()
	if herr == nil {
		switch r := v.(type) {
		case map[any]any: // RESP3
			if mode, ok := r["mode"].(string); ok && mode != "" {
				return mode, nil
			}
		case []any: // RESP2: field, value, ...
			for i := 0; i+1 < len(r); i += 2 {
				if k, _ := r[i].(string); k == "mode" {
					if mode, ok := r[i+1].(string); ok && mode != "" {
						return mode, nil
					}
				}
			}
		}
	}
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return "", errors.Join(herr, err)
	}
	for _, line := range strings.Split(info, "\n") {
		if mode, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_mode:"); ok {
			return mode, nil
		}
	}
	return "", errors.New("neither HELLO nor INFO server names the mode")
}

// modeUnknownError is checkMode's error when the server did not say what it is.
type modeUnknownError struct{ err error }

func (e *modeUnknownError) Error() string { return e.err.Error() }
func (e *modeUnknownError) Unwrap() error { return e.err }

// checkServeRedis is checkMode for serve's own clients: a section (section: "redis", or
// "recordings.redis" for the recordings' Redis) of one address without cluster_mode that names
// a Cluster node (or a Sentinel without master_name) is refused at start, as the commands
// refuse it: the recordings of sessions whose keys hash to another master's slots would be
// refused with MOVED, or a Sentinel would answer none of them. A Redis that cannot be asked at
// start is no reason not to start (readiness says it is down); log hears of it.
func checkServeRedis(ctx context.Context, rdb redis.UniversalClient, rc RedisConfig, section string, d time.Duration, log func(error)) error {
	t := &redisTarget{name: "config", section: section}
	// Sentinels that refuse the configured credentials stay so: refused at start, as the
	// commands refuse them, rather than a replica that is never ready and says "unreachable".
	if err := t.checkSentinelAuth(ctx, rdb, rc, d); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	err := t.checkMode(ctx, rdb, rc)
	var u *modeUnknownError
	if errors.As(err, &u) {
		log(err)
		return nil
	}
	return err
}

// sentinelSection is sec when rc reaches its Redis through Sentinels, "" otherwise.
func sentinelSection(rc RedisConfig, sec string) string {
	if rc.MasterName == "" {
		return ""
	}
	return sec
}
