package store

// ShardOf is the inventory shard r records identity's certificates in.
func ShardOf(r *Redis, identity string) int { return r.shardOf(identity) }
