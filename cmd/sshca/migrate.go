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
	var shards int
	cmd := &cobra.Command{
		Use:   "migrate --redis URL [--cluster | --sentinel-master NAME] | --config FILE [--inventory-shards N]",
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
idempotent; on a store already at this layout it changes nothing.

With --inventory-shards N it changes the store's number of inventory shards instead (and
leaves the layout as it is). Every CA replica must be configured with the store's number
(inventory.shards): a replica with another refuses to start, and one that runs when the number
changes refuses every certificate and fails /readyz until it is restarted with the new one, so
that no two replicas reserve a serial in different keys. Set the new inventory.shards in every
replica's configuration, run this, then restart the replicas. Readers walk every shard ever
used, so lowering the number loses no certificate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("inventory-shards") {
				return runSetShards(cmd.Context(), &target, cmd.Flags(), shards, cmd.OutOrStdout())
			}
			return runMigrate(cmd.Context(), &target, cmd.Flags(), cmd.OutOrStdout())
		},
	}
	addRedisTargetFlags(cmd.Flags(), &target, "", "of the store")
	cmd.Flags().IntVar(&shards, "inventory-shards", 0, fmt.Sprintf("change the store's number of inventory shards to N (1 to %d), the inventory.shards every CA replica must then be configured with", store.MaxInventoryShards))
	return cmd
}

// runSetShards is `sshca store migrate --inventory-shards N`.
func runSetShards(ctx context.Context, target *redisTarget, fs *pflag.FlagSet, n int, out io.Writer) error {
	if n < 1 || n > store.MaxInventoryShards {
		return fmt.Errorf("store migrate: --inventory-shards %d: want 1 to %d (about the number of masters of a Redis Cluster; 1 on a single Redis or Sentinel)", n, store.MaxInventoryShards)
	}
	rdb, err := target.open(ctx, fs, 10*time.Second, nil, nil)
	if err != nil {
		return fmt.Errorf("store migrate: %w", err)
	}
	defer rdb.Close()
	prev, err := store.NewRedis(rdb, store.RedisOptions{}).SetShards(ctx, n)
	if err != nil {
		return fmt.Errorf("store migrate: %w", err)
	}
	switch prev {
	case n:
		fmt.Fprintf(out, "the store's inventory has %d shards already: nothing to do\n", n)
	case 0:
		fmt.Fprintf(out, "inventory shards set to %d (the store had no number yet): CA replicas configured with another inventory.shards refuse to issue until restarted with %d\n", n, n)
	default:
		fmt.Fprintf(out, "inventory shards %d → %d: CA replicas configured with inventory.shards %d refuse to issue and are not ready until restarted with %d\n", prev, n, prev, n)
	}
	return nil
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
