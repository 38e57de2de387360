package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/store"
)

// newStoreMigrateCommand is `sshca store migrate`, the last step of a rolling upgrade that
// changes the store's layout (store/layout.go).
func newStoreMigrateCommand() *cobra.Command {
	var redisURL string
	cmd := &cobra.Command{
		Use:   "migrate --redis URL",
		Short: "Move the store to this sshca's key layout, once no CA replica of an older version runs",
		Long: `Finish a rolling upgrade that changed the layout of sshca's keys in Redis.

While the store is at an older layout, CA replicas of this version also write and read what
older replicas use, or hold back what older ones cannot read, so both kinds can run side by
side. Once every CA replica runs this version, migrate copies what is still in force to the
new layout and records the store's new layout; replicas then stop writing and reading the old
keys, and older replicas and tools refuse the store ("upgrade sshca").

From layout 1, identity blocks move into the inventory's hash tag, where recording a
certificate checks them in the same step. From layout 2, nothing moves: layout 3 lets CA
replicas configured with audit.stripes append beyond stripe 0 (within 5 s), which sshca of
layout 2 would not read (its audit verify, archive, report and store rebuild read stripe 0
alone). Do not run replicas or tools older than the store's layout afterwards. It is
idempotent; on a store already at this layout it changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMigrate(cmd.Context(), redisURL, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&redisURL, "redis", os.Getenv("SSHCA_REDIS_URL"), "redis://user:password@host:port/db of the store (env SSHCA_REDIS_URL)")
	return cmd
}

// runMigrate is `sshca store migrate`.
func runMigrate(ctx context.Context, redisURL string, out io.Writer) error {
	if redisURL == "" {
		return errors.New("store migrate: --redis URL (the store to migrate) is required")
	}
	ropts, err := parseRedisURL(redisURL) // errors never echo the URL: it may hold a password
	if err != nil {
		return fmt.Errorf("--redis: %w", err)
	}
	rdb := redis.NewClient(newRedisBounds(10*time.Second, ropts.DialTimeout, ropts.ReadTimeout, ropts.WriteTimeout).single(ropts))
	defer rdb.Close()
	m, err := store.NewRedis(rdb, store.RedisOptions{}).Migrate(ctx)
	if err != nil {
		return fmt.Errorf("store migrate: %w", err)
	}
	if m.From == m.To {
		fmt.Fprintf(out, "the store is at layout %d already: nothing to do\n", m.To)
		return nil
	}
	fmt.Fprintf(out, "store layout %d → %d", m.From, m.To)
	if m.From < 2 {
		fmt.Fprintf(out, ": %d identity blocks in force copied", m.Blocks)
	}
	if m.From < store.LayoutStripes && m.To >= store.LayoutStripes {
		fmt.Fprintf(out, "; CA replicas configured with audit stripes start striping within 5 s, and sshca older than layout %d now refuses this store", store.LayoutStripes)
	}
	fmt.Fprintln(out)
	return nil
}
