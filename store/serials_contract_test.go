package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/signer"
	"github.com/sshca/sshca/store"
)

// TestSerialsContract: a serial is reserved once (signer.SerialReserver), on every backend.
func TestSerialsContract(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newStore newStore) {
		testSerials(t, func(t *testing.T, c *clock) signer.SerialReserver { return newStore(t, c) })
	})
}

func testSerials(t *testing.T, newStore func(*testing.T, *clock) signer.SerialReserver) {
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(time.Second)
	t.Run("reserve serial", func(t *testing.T) {
		c := &clock{t: t0}
		s := newStore(t, c)
		ok, err := s.ReserveSerial(ctx, 7, t0.Add(time.Hour))
		if err != nil || !ok {
			t.Fatalf("first reservation = %v %v", ok, err)
		}
		if ok, err := s.ReserveSerial(ctx, 7, t0.Add(time.Hour)); err != nil || ok {
			t.Fatalf("second reservation = %v %v, want false", ok, err)
		}
		if ok, _ := s.ReserveSerial(ctx, 8, t0.Add(time.Hour)); !ok {
			t.Fatal("serial 8 not free")
		}
	})
}

// TestRedisReservationExpires: on a real server the reservation goes away at its time.
func TestRedisReservationExpires(t *testing.T) {
	r := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	s := store.NewRedis(rdb, store.RedisOptions{})
	ctx := context.Background()
	if ok, _ := s.ReserveSerial(ctx, 5, time.Now().Add(1100*time.Millisecond)); !ok {
		t.Fatal("not reserved")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if ok, _ := s.ReserveSerial(ctx, 5, time.Now().Add(time.Hour)); ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("reservation did not expire")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
