package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/signer"
)

// isKMSError says whether a failed signature is the CA key's (services.Metrics.IsKMSError).
func isKMSError(err error) bool {
	var ke *signer.KeyError
	return errors.As(err, &ke)
}

// redisErrors is a go-redis hook counting the commands and pipelines that failed, whoever sent
// them (store, audit, readiness probes): sshca_redis_errors_total. Answers that are part of
// normal work are not errors: a missing key (redis.Nil), a WATCH conflict that the store
// retries (redis.TxFailedErr), NOSCRIPT before go-redis loads a script with EVAL, and the
// handshake's CLIENT SETINFO and CLIENT MAINT_NOTIFICATIONS, which go-redis sends on new
// connections and Redis before 7.2 (8.x for the latter) refuses.
type redisErrors struct{ count prometheus.Counter }

// countRedisErrors registers sshca_redis_errors_total with reg and counts rdb's errors in it.
func countRedisErrors(rdb redis.UniversalClient, reg prometheus.Registerer) {
	h := redisErrors{prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sshca_redis_errors_total",
		Help: "Redis commands and pipelines that failed (connection, timeout, or an error reply), answers of normal work (missing key, WATCH conflict, NOSCRIPT) excepted.",
	})}
	reg.MustRegister(h.count)
	rdb.AddHook(h)
}

// handshake are the CLIENT subcommands go-redis sends on a new connection whether the server
// knows them or not.
var handshake = map[string]bool{"setinfo": true, "maint_notifications": true}

// failed says whether cmd's error err is a failure.
func failed(cmd redis.Cmder, err error) bool {
	switch {
	case err == nil, errors.Is(err, redis.Nil), errors.Is(err, redis.TxFailedErr):
		return false
	case strings.HasPrefix(err.Error(), "NOSCRIPT"):
		return false
	case cmd != nil && cmd.Name() == "client" && len(cmd.Args()) > 1 && handshake[strings.ToLower(fmt.Sprint(cmd.Args()[1]))]:
		return false
	}
	return true
}

func (h redisErrors) DialHook(next redis.DialHook) redis.DialHook {
	return next // a failed dial fails the command that needed it: counted there
}

func (h redisErrors) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if failed(cmd, err) {
			h.count.Inc()
		}
		return err
	}
}

// ProcessPipelineHook counts a pipeline (or MULTI/EXEC) once when any of its commands failed.
func (h redisErrors) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if err != nil {
			bad := len(cmds) == 0 && failed(nil, err)
			for _, c := range cmds {
				bad = bad || failed(c, c.Err())
			}
			if bad {
				h.count.Inc()
			}
		}
		return err
	}
}
