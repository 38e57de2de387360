package ca

import (
	"context"
	"errors"
	"strings"
	"time"
)

// SignedCertTimeout bounds the work left once a certificate is signed: recording it in the
// inventory and keeping its audit record. That work runs to completion under this bound of its
// own, even when the request's deadline has passed meanwhile, so that the inventory never
// misses a signed certificate; a failure of that work is audited under a second such bound
// (then retried in the background, see SignedAuditRetry). A server's write timeout must leave
// room for the request deadline plus twice this.
const SignedCertTimeout = 2 * time.Second

// storeReply is how a store's client marks an error that is the server's own answer to a
// command, as opposed to a failure to get one (go-redis: "a type is a Redis error if it has a
// RedisError method"). Declared here so that ca imports no store client.
type storeReply interface {
	error
	RedisError()
}

// unavailableReplies are the server answers that mean "cannot serve now", whatever was asked:
// out of memory (maxmemory with noeviction), loading its data, a replica or a failover, a
// cluster or a script busy, no replica for WAIT, a failed disk, too many clients, and
// credentials or ACLs that do not (or no longer) let sshca in.
var unavailableReplies = []string{
	"OOM ", "LOADING ", "READONLY ", "MASTERDOWN ", "CLUSTERDOWN ", "TRYAGAIN ", "BUSY ",
	"NOREPLICAS ", "MISCONF ", "ERR max number of clients", "NOAUTH ", "WRONGPASS ", "NOPERM ",
}

// storeErr classifies err from a store (inventory, revocations, token ledger, audit log).
// A store that does not answer (network errors, timeouts, the request's deadline, a dropped
// connection, a client that is closed) or answers that it cannot serve now is KindUnavailable
// with msg: a 503, and worth retrying. An answer that refuses this request's own data (a
// WRONGTYPE, a script error on an argument, a cross-slot key) is not the store being down: it is
// a fault of ours that the same request would hit again, KindInternal, and logged as such.
func storeErr(msg string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err // already classified (e.g. by a store that speaks the domain's errors)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return Unavailable(msg, err)
	}
	var reply storeReply
	if !errors.As(err, &reply) {
		return Unavailable(msg, err)
	}
	s := reply.Error()
	for _, p := range unavailableReplies {
		if strings.HasPrefix(s, p) {
			return Unavailable(msg, err)
		}
	}
	return &Error{Kind: KindInternal, Msg: "the store refused the request's data", Err: err}
}
