package store_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/audit"
	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/store"
)

// TestMarkOfIssuanceTags: the tags issuance writes (inventory, token ledger, audit chain)
// carry marks that their writes bump in the same round trip. One tag rolled back alone (its
// mark restored from an older copy, as a Redis Cluster shard restored from its snapshot, or
// its mark lost) is noticed by the next write to it and fails issuance (Refused) and
// readiness (CheckState); another process writing to the tag in between is not a rollback.
func TestMarkOfIssuanceTags(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	n := 0
	writes := map[string]func(*store.Redis) error{
		store.TagInventory: func(s *store.Redis) error {
			n++
			return s.Record(ctx, ca.Certificate{Serial: uint64(n), KeyID: "alice#" + strconv.Itoa(n), Kind: ca.UserCert,
				Identity: "https://idp|alice", ValidBefore: time.Now().Add(time.Hour)})
		},
		store.TagTokens: func(s *store.Redis) error {
			n++
			ok, err := s.UseToken(ctx, "iss|"+strconv.Itoa(n), time.Now(), time.Now().Add(time.Hour))
			if err == nil && !ok {
				err = errors.New("a fresh token was refused")
			}
			return err
		},
		store.TagAudit: func(s *store.Redis) error {
			n++
			return audit.New(rdb, audit.Options{Marks: s}).Append(ctx, ca.AuditRecord{Time: time.Now(), Action: ca.ActionUser,
				Outcome: "issued", Serial: uint64(n)})
		},
	}
	for tag, write := range writes {
		for _, loss := range []string{"rolled back", "missing"} {
			t.Run(tag+" "+loss, func(t *testing.T) {
				rdb.FlushAll(ctx)
				s := store.NewRedis(rdb, store.RedisOptions{})
				caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
				markKey := store.Keys{}.Mark(tag)
				for range 2 {
					if err := write(s); err != nil {
						t.Fatal(err)
					}
				}
				if v, _ := rdb.HGet(ctx, markKey, "n").Result(); v != "2" {
					t.Fatalf("mark of %s after 2 writes: n=%q, want 2", tag, v)
				}
				// Another process writes to the tag: the mark moves on, which is no loss.
				if err := write(store.NewRedis(rdb, store.RedisOptions{})); err != nil {
					t.Fatal(err)
				}
				if err := write(s); err != nil {
					t.Fatal(err)
				}
				if err := s.CheckState(ctx, caKey); err != nil {
					t.Fatalf("another process's writes taken for a loss: %v", err)
				}
				old, err := rdb.Dump(ctx, markKey).Result()
				if err != nil {
					t.Fatal(err)
				}
				if err := write(s); err != nil {
					t.Fatal(err)
				}
				if loss == "missing" {
					rdb.Del(ctx, markKey)
				} else if err := rdb.RestoreReplace(ctx, markKey, 0, old).Err(); err != nil {
					t.Fatal(err)
				}
				err = write(s)
				if tag == store.TagTokens {
					if !errors.Is(err, store.ErrStateLost) {
						t.Fatalf("a token on a %s ledger: %v, want ErrStateLost (the tokens spent before are not known)", loss, err)
					}
				} else if err != nil {
					t.Fatalf("a write to a %s tag must stand: %v", loss, err)
				}
				if _, err := s.Refused(ctx, caKey, nil, key); !errors.Is(err, store.ErrStateLost) {
					t.Errorf("issuance check after %s %s: %v, want ErrStateLost", tag, loss, err)
				}
				if err := s.CheckState(ctx, caKey); !errors.Is(err, store.ErrStateLost) {
					t.Errorf("readiness after %s %s: %v, want ErrStateLost", tag, loss, err)
				}
			})
		}
	}
}

// TestMarkOfIssuanceTagsReadBeforeSigning: a tag of issuance rolled back is found by the
// signing-time check (Refused reads its mark in its one round trip) before anything is
// signed, even when no write to it came first.
func TestMarkOfIssuanceTagsReadBeforeSigning(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	s := store.NewRedis(rdb, store.RedisOptions{})
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	if err := s.Record(ctx, ca.Certificate{Serial: 1, KeyID: "a#1", Kind: ca.UserCert, Identity: "x", ValidBefore: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if why, err := s.Refused(ctx, caKey, nil, key); err != nil || why != "" {
		t.Fatalf("intact: %q %v", why, err)
	}
	rdb.Del(ctx, store.Keys{}.Mark(store.TagInventory))
	if _, err := s.Refused(ctx, caKey, nil, key); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("inventory mark gone, signing-time check: %v, want ErrStateLost", err)
	}
}

// TestMarkOfAuditStripesReadBeforeSigning: with the audit chain in stripes
// (RedisOptions.AuditStripes), the signing-time check reads the mark of every stripe, not only
// {audit}'s: a stripe's tag lost alone (a Cluster master rolled back) fails issuance before
// anything is signed, though no append to that stripe came first. A store told of one stripe
// does not read it (the control: the same loss passes its check).
func TestMarkOfAuditStripesReadBeforeSigning(t *testing.T) {
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	w := &store.Witness{}
	one := store.NewRedis(rdb, store.RedisOptions{Witness: w})
	three := store.NewRedis(rdb, store.RedisOptions{Witness: w, AuditStripes: 3})
	caKey, key := testenv.PublicKey(t), testenv.PublicKey(t)
	l := audit.New(rdb, audit.Options{Marks: three, Stripes: 3, Home: new(2)})
	for i := range 2 {
		if err := l.Append(ctx, ca.AuditRecord{Time: time.Now(), Action: ca.ActionUser, Outcome: "issued", Serial: uint64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	if why, err := three.Refused(ctx, caKey, nil, key); err != nil || why != "" {
		t.Fatalf("intact: %q %v", why, err)
	}
	rdb.Del(ctx, store.Keys{}.Mark(store.TagAuditStripe(2)))
	if why, err := one.Refused(ctx, caKey, nil, key); err != nil || why != "" {
		t.Fatalf("a store told of one stripe: %q %v; the control should not read stripe 2's mark", why, err)
	}
	if _, err := three.Refused(ctx, caKey, nil, key); !errors.Is(err, store.ErrStateLost) {
		t.Fatalf("stripe 2's mark gone, signing-time check: %v, want ErrStateLost", err)
	}
}
