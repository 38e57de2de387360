package main

import (
	"errors"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Redis URLs (redis://user:password@host:port/db, rediss://, ?password=) carry a password, so
// they are never printed as given: errors say what is wrong without the URL, and anything
// that shows a URL shows redactRedisURL of it.

// redisURLSecretParams are the query parameters of a Redis URL that hold a secret.
var redisURLSecretParams = []string{"password", "sentinel_password"}

// parseRedisURL is redis.ParseURL with errors that never carry the URL or a part of it:
// net/url prints the whole URL in its errors, and a password holding "/" or "@" even makes it
// print a piece of the password as a host or port.
func parseRedisURL(raw string) (*redis.Options, error) {
	o, err := redis.ParseURL(raw)
	if err == nil {
		return o, nil
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return nil, errors.New("not a valid URL (redis://user:password@host:port/db; percent-encode any of : / ? # @ % in the user name or password)")
	}
	msg := err.Error()
	for _, s := range redisURLSecrets(raw) {
		msg = strings.ReplaceAll(msg, s, "REDACTED")
	}
	return nil, errors.New(msg)
}

// redactRedisURL returns the URL with its password (in the user info or the query) replaced.
// A URL that does not parse is not shown at all.
func redactRedisURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" || !strings.Contains(raw, "://") {
		return "(a Redis URL that does not parse; not shown, it may hold a password)"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	}
	q := u.Query()
	for _, p := range redisURLSecretParams {
		if q.Has(p) {
			q.Set(p, "REDACTED")
		}
	}
	if u.RawQuery != "" {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// redisURLSecrets lists, as well as can be told from a URL that may not parse, every piece
// of raw that may be a password: the user info, and the values of the secret parameters.
func redisURLSecrets(raw string) []string {
	var out []string
	if _, rest, ok := strings.Cut(raw, "://"); ok {
		if i := strings.LastIndex(rest, "@"); i > 0 {
			out = append(out, rest[:i])
			if _, pw, ok := strings.Cut(rest[:i], ":"); ok && pw != "" {
				out = append(out, pw)
				if d, err := url.PathUnescape(pw); err == nil {
					out = append(out, d)
				}
			}
		}
	}
	if _, query, ok := strings.Cut(raw, "?"); ok {
		for _, kv := range strings.Split(query, "&") {
			k, v, _ := strings.Cut(kv, "=")
			for _, p := range redisURLSecretParams {
				if k == p && v != "" {
					out = append(out, v)
					if d, err := url.QueryUnescape(v); err == nil {
						out = append(out, d)
					}
				}
			}
		}
	}
	return out
}
