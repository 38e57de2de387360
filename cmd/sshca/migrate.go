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
older replicas use, so both kinds can run side by side. Once every CA replica runs this
version, migrate copies what is still in force to the new layout (today: identity blocks
move into the inventory's hash tag, where recording a certificate checks them in the same
step) and records the store's new layout; replicas then stop writing and reading the old keys.
Do not run replicas older than the store's layout afterwards: they would not see the blocks
written since. It is idempotent; on a store already at this layout it changes nothing.`,
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
	fmt.Fprintf(out, "store layout %d → %d: %d identity blocks in force copied\n", m.From, m.To, m.Blocks)
	return nil
}
