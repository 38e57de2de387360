package store

import "crypto/sha256"

// ShardOf is the inventory shard r records identity's certificates in.
func ShardOf(r *Redis, identity string) int { return r.shardOf(identity) }

// TokenShardOf is the token ledger shard r spends a token ID in.
func TokenShardOf(r *Redis, id string) int {
	sum := sha256.Sum256([]byte(id))
	return r.tokenShardOf(sum)
}
