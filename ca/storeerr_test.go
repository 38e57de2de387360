package ca

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/internal/testenv"
)

// TestStoreErr classifies errors that a real redis-server and go-redis produce: the store not
// answering or unable to serve is unavailable; a refusal of the request's own data is not.
func TestStoreErr(t *testing.T) {
	r := testenv.StartRedis(t)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer rdb.Close()
	if err := rdb.Set(ctx, "s", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	wrongType := rdb.ZAdd(ctx, "s", redis.Z{Score: 1, Member: "m"}).Err()
	scriptErr := redis.NewScript(`return redis.call('INCRBY', KEYS[1], ARGV[1])`).Run(ctx, rdb, []string{"n"}, "not-a-number").Err()
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	oom := rdb.Set(ctx, "t", "x", 0).Err()
	oomScript := redis.NewScript(`return redis.call('SET', KEYS[1], ARGV[1])`).Run(ctx, rdb, []string{"t"}, "x").Err()
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	<-short.Done()
	deadline := rdb.Get(short, "s").Err()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	refusedClient := redis.NewClient(&redis.Options{Addr: closed, MaxRetries: -1})
	defer refusedClient.Close()
	refused := refusedClient.Get(ctx, "s").Err()

	for _, tt := range []struct {
		name string
		err  error
		want ErrorKind
	}{
		{"WRONGTYPE", wrongType, KindInternal},
		{"script error on an argument", scriptErr, KindInternal},
		{"wrapped WRONGTYPE", fmt.Errorf("revocation: record: %w", wrongType), KindInternal},
		{"OOM at maxmemory", oom, KindUnavailable},
		{"OOM inside a script", oomScript, KindUnavailable},
		{"the request's deadline", deadline, KindUnavailable},
		{"connection refused", refused, KindUnavailable},
		{"unknown error", errors.New("something"), KindUnavailable},
		{"already classified", Invalid("bad"), KindInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err == nil {
				t.Fatal("the server gave no error")
			}
			if got := KindOf(storeErr("store unavailable", tt.err)); got != tt.want {
				t.Errorf("storeErr(%v) kind = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
	if storeErr("x", nil) != nil {
		t.Error("storeErr(nil) != nil")
	}
}
