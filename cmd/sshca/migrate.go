package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/sshca/sshca/store"
)

// newStoreMigrateCommand is `sshca store migrate`, the last step of a rolling upgrade that
// changes the store's layout (store/layout.go).
func newStoreMigrateCommand() *cobra.Command {
	var target redisTarget
	cmd := &cobra.Command{
		Use:   "migrate --redis URL [--cluster | --sentinel-master NAME] | --config FILE",
		Short: "Move the store to this sshca's key layout, once no CA replica of an older version runs",
		Long: `Finish a rolling upgrade that changed the layout of sshca's keys in Redis.

While the store is at an older layout, CA replicas of this version also write and read what
older replicas use, or hold back what older ones cannot read, so both kinds can run side by
side. Once every CA replica runs this version, migrate copies what is still in force to the
new layout and records the store's new layout; replicas then stop writing and reading the old
keys, and older replicas and tools refuse the store ("upgrade sshca").

From layout 1, identity blocks move into the inventory's hash tag, where recording a
certificate checks them in the same step. From layout 2, nothing moves: layout 3 lets CA
replicas configured with audit.stripes append beyond stripe 0 (within 5 s) and those with
inventory.shards keep certificates beyond the first shard (from their next certificate),
which sshca of layout 2 would not read (its audit verify, archive, report and store rebuild
read stripe 0 alone; its lists and revocations by identity the first shard alone; and a
running one that has seen layout 2 never reads the layout again). Do not run replicas or tools older than the store's layout afterwards. It is
idempotent; on a store already at this layout it changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runMigrate(cmd.Context(), &target, cmd.Flags(), cmd.OutOrStdout())
		},
	}
	addRedisTargetFlags(cmd.Flags(), &target, "", "of the store")
	return cmd
}

// runMigrate is `sshca store migrate`; fs, when not nil, tells an explicit --redis from the
// environment's.
func runMigrate(ctx context.Context, target *redisTarget, fs *pflag.FlagSet, out io.Writer) error {
	rdb, err := target.open(ctx, fs, 10*time.Second, nil, nil)
	if err != nil {
		return fmt.Errorf("store migrate: %w", err)
	}
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
		fmt.Fprintf(out, "; CA replicas configured with audit stripes start striping within 5 s, those with inventory shards use them from their next certificate, and sshca older than layout %d now refuses this store", store.LayoutStripes)
	}
	fmt.Fprintln(out)
	return nil
}
