package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
)

// Access requests (ca.AccessRequestStore): each a JSON record (Keys.Request) expiring at its
// KeepUntil, listed in two sorted sets: by KeepUntil (Keys.Requests), which every write prunes
// up to now, and by CreatedAt (Keys.RequestOrder), which lists page (a decision moves a
// request's KeepUntil, never its creation). All carry the inventory's first hash tag (shard
// 0's), so that each change is one transaction on Redis Cluster too; the certificates issued
// under a request are in their identity's shard (RecordUnderRequest). Changes are optimistic:
// WATCH the record, read it, change it, write it in MULTI/EXEC, and start again if it changed
// meanwhile.

var (
	_ ca.AccessRequestStore = (*Redis)(nil)
	_ ca.AccessRequestStore = (*Memory)(nil)
)

// maxRequestRetries bounds the optimistic retries of one change: past it the record is being
// written continuously, which no caller's change should wait out.
const maxRequestRetries = 16

func errRequestContended(id string) error {
	return &ca.Error{Kind: ca.KindUnavailable, Msg: "access request " + id + " is being changed by others; try again"}
}

func errRequestNotFound(id string) error {
	return &ca.Error{Kind: ca.KindNotFound, Msg: "no access request " + id}
}

// CreateRequest stores a new request until its KeepUntil; KindConflict when the ID exists.
func (r *Redis) CreateRequest(ctx context.Context, req ca.AccessRequest) error {
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("store: create request: %w", err)
	}
	var set *redis.BoolCmd
	_, err = r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		set = p.SetNX(ctx, r.keys.Request(req.ID), b, 0)
		p.PExpireAt(ctx, r.keys.Request(req.ID), req.KeepUntil())
		r.indexRequest(ctx, p, req)
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: create request %s: %w", req.ID, err)
	}
	if !set.Val() {
		return &ca.Error{Kind: ca.KindConflict, Msg: "access request " + req.ID + " exists"}
	}
	return nil
}

// requestIndexScript: KEYS Requests, RequestOrder; ARGV now (unix ms), the request's
// KeepUntil and CreatedAt (unix ms), its ID. Takes the requests no longer kept out of both
// indexes, then indexes the request: by its KeepUntil as it is now, by its creation once (NX:
// whatever a change writes, its place in the order a listing pages stays).
var requestIndexScript = redis.NewScript(`
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do redis.call('ZREM', KEYS[2], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[4])
return 1
`)

// indexRequest queues the indexing of req on p, a transaction (EVAL by body: a transaction
// cannot retry an EVALSHA the server does not know).
func (r *Redis) indexRequest(ctx context.Context, p redis.Pipeliner, req ca.AccessRequest) {
	requestIndexScript.Eval(ctx, p, []string{r.keys.Requests(), r.keys.RequestOrder()},
		r.now().UnixMilli(), req.KeepUntil().UnixMilli(), req.CreatedAt.UnixMilli(), req.ID)
}

// requestsSyncScript: KEYS Requests, RequestOrder; ARGV now (unix ms). Replicas of stop 16
// index requests in Requests alone: it prunes both indexes up to now (as requestIndexScript
// does), takes out of RequestOrder what Requests no longer holds (pruned by such a replica)
// and answers the IDs that Requests keeps and RequestOrder lacks (created by one, or before
// the upgrade), for the caller to add with their CreatedAt (syncRequestOrder). When both hold
// the same members (no older replica wrote since) one ZINTERCARD says so, in C; only when they
// differ, or where ZINTERCARD is missing (miniredis, sshca dev), does it look member by member
// (one ZSCORE each, in Lua: 0.4 to 1 s at 50,000 on this machine, which blocks the server).
var requestsSyncScript = redis.NewScript(`
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do redis.call('ZREM', KEYS[2], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n == redis.call('ZCARD', KEYS[2]) then
  local both = redis.pcall('ZINTERCARD', 2, KEYS[1], KEYS[2])
  if both == n then return {} end
end
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[1], m) then redis.call('ZREM', KEYS[2], m) end
end
local out = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[2], m) then out[#out + 1] = m end
end
return out
`)

// syncRequestOrder adds to RequestOrder the requests that sync (requestsSyncScript's answer)
// says it lacks, each by the CreatedAt of its record (NX: one a replica indexed meanwhile keeps
// its place). It answers whether it added any. A record gone meanwhile is not added.
func (r *Redis) syncRequestOrder(ctx context.Context, sync *redis.Cmd) (bool, error) {
	ids, err := sync.StringSlice()
	if err != nil || len(ids) == 0 {
		return false, err
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = r.keys.Request(id)
	}
	vals, err := r.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return false, err
	}
	var add []redis.Z
	for i, v := range vals {
		b, ok := v.(string)
		if !ok {
			continue
		}
		var req ca.AccessRequest
		if err := json.Unmarshal([]byte(b), &req); err != nil {
			return false, fmt.Errorf("corrupt request %s: %w", ids[i], err)
		}
		add = append(add, redis.Z{Score: float64(req.CreatedAt.UnixMilli()), Member: ids[i]})
	}
	if len(add) == 0 {
		return false, nil
	}
	return true, r.rdb.ZAddNX(ctx, r.keys.RequestOrder(), add...).Err()
}

// GetRequest returns the request, if kept.
func (r *Redis) GetRequest(ctx context.Context, id string) (ca.AccessRequest, bool, error) {
	return r.getRequest(ctx, r.rdb, id)
}

func (r *Redis) getRequest(ctx context.Context, c redis.Cmdable, id string) (ca.AccessRequest, bool, error) {
	b, err := c.Get(ctx, r.keys.Request(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return ca.AccessRequest{}, false, nil
	}
	if err != nil {
		return ca.AccessRequest{}, false, fmt.Errorf("store: get request %s: %w", id, err)
	}
	var req ca.AccessRequest
	if err := json.Unmarshal(b, &req); err != nil {
		return ca.AccessRequest{}, false, fmt.Errorf("store: corrupt request %s: %w", id, err)
	}
	if !req.KeepUntil().After(r.now()) {
		return ca.AccessRequest{}, false, nil // a server whose keys do not expire (miniredis)
	}
	return req, true, nil
}

// ListRequests returns the kept requests, oldest first.
func (r *Redis) ListRequests(ctx context.Context) ([]ca.AccessRequest, error) {
	ids, err := r.rdb.ZRangeByScore(ctx, r.keys.Requests(), &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(r.now().UnixMilli(), 10), Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("store: list requests: %w", err)
	}
	var out []ca.AccessRequest
	for _, id := range ids {
		req, ok, err := r.getRequest(ctx, r.rdb, id)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, req)
		}
	}
	sortRequests(out)
	return out, nil
}

// RequestsPage returns at most limit kept requests (0: all) after the position after, in
// ca.RequestCursor order (CreatedAt, then ID: Keys.RequestOrder's), and where the next page
// starts (zero: none is left): one script reads the page of the index (pageScript, the
// position by rank, so requests created, decided or pruned in between do not shift it), one
// MGET the records (one tag, so one slot on Redis Cluster). A request whose record expired
// meanwhile is skipped, but still moves the position. The first page of a listing (after
// zero) first brings the index up to date with what replicas of stop 16 wrote
// (requestsSyncScript, in the same round trip as the page when nothing is missing): a request
// kept throughout is then in the index before the listing starts, and no change moves it.
func (r *Redis) RequestsPage(ctx context.Context, after ca.RequestCursor, limit int) ([]ca.AccessRequest, ca.RequestCursor, error) {
	now := r.now()
	idx := []string{r.keys.Requests(), r.keys.RequestOrder()}
	var sync, pageCmd *redis.Cmd
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if after.IsZero() {
			sync = requestsSyncScript.Eval(ctx, p, idx, now.UnixMilli())
		}
		pageCmd = pageScript.Eval(ctx, p, idx[1:], "-inf", after.CreatedAt, after.ID, limit)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, ca.RequestCursor{}, fmt.Errorf("store: list requests: %w", err)
	}
	if sync != nil {
		added, err := r.syncRequestOrder(ctx, sync)
		if err != nil {
			return nil, ca.RequestCursor{}, fmt.Errorf("store: list requests: index the requests of older replicas: %w", err)
		}
		if added { // the page read with them
			pageCmd = pageScript.Eval(ctx, r.rdb, idx[1:], "-inf", after.CreatedAt, after.ID, limit)
		}
	}
	page, more, err := pageAnswer(pageCmd)
	if err != nil {
		return nil, ca.RequestCursor{}, fmt.Errorf("store: list requests: %w", err)
	}
	if len(page) == 0 {
		return nil, ca.RequestCursor{}, nil
	}
	keys := make([]string, len(page))
	for i, z := range page {
		keys[i] = r.keys.Request(z.member)
	}
	vals, err := r.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, ca.RequestCursor{}, fmt.Errorf("store: list requests: %w", err)
	}
	var out []ca.AccessRequest
	for i, v := range vals {
		b, ok := v.(string)
		if !ok {
			continue // expired since the index was read
		}
		var req ca.AccessRequest
		if err := json.Unmarshal([]byte(b), &req); err != nil {
			return nil, ca.RequestCursor{}, fmt.Errorf("store: corrupt request %s: %w", page[i].member, err)
		}
		if req.KeepUntil().After(now) { // a server whose keys do not expire (miniredis)
			out = append(out, req)
		}
	}
	var next ca.RequestCursor
	if more {
		last := page[len(page)-1]
		next = ca.RequestCursor{CreatedAt: int64(last.score), ID: last.member}
	}
	return out, next, nil
}

// UpdateRequest applies change to the request and writes it, unless the request changed
// meanwhile (then it starts again, up to maxRequestRetries times).
func (r *Redis) UpdateRequest(ctx context.Context, id string, change func(*ca.AccessRequest) error) (ca.AccessRequest, error) {
	var out ca.AccessRequest
	err := r.changeRequest(ctx, id, func(tx *redis.Tx, req ca.AccessRequest) (func(redis.Pipeliner), error) {
		was := req
		if err := change(&req); err != nil {
			return nil, err
		}
		// A change cannot rename a request, nor move it in the order lists page.
		req.ID, req.CreatedAt = id, was.CreatedAt
		b, err := json.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("store: update request: %w", err)
		}
		out = req
		return func(p redis.Pipeliner) {
			p.Set(ctx, r.keys.Request(id), b, 0)
			p.PExpireAt(ctx, r.keys.Request(id), req.KeepUntil())
			r.indexRequest(ctx, p, req)
		}, nil
	})
	return out, err
}

// RecordUnderRequest records c in the inventory shard of its identity, as Record does (the
// identity's blocks checked in the script that writes), then appends its serial to the request
// if check passes on the request as it is (an optimistic transaction on the request alone),
// and takes the record back when check refuses or the request cannot be written. Two steps of
// one hash slot each: the request is in the inventory's first tag ({inventory}, Keys.Request),
// the certificate in its identity's ({inventory:i}, shards.go), so that certificates issued
// under requests spread over a Cluster's masters like every other. The record comes first so
// that whatever ends the request meanwhile finds the certificate: a revocation of the request
// after the append reads its serial and revokes it; one before the append makes check refuse,
// and the certificate is not handed out (ca.Authority). A block of the identity written after
// the record reads it among the live certificates, as with Record. When the take-back fails
// (Redis gone between the steps) a record stays of a certificate never handed out, expiring
// with it, as Admit's record before signing does.
func (r *Redis) RecordUnderRequest(ctx context.Context, c ca.Certificate, id string, check func(ca.AccessRequest) error) error {
	if err := r.Record(ctx, c); err != nil {
		return err
	}
	err := r.changeRequest(ctx, id, func(tx *redis.Tx, req ca.AccessRequest) (func(redis.Pipeliner), error) {
		if err := check(req); err != nil {
			return nil, err
		}
		req.Serials = append(req.Serials, c.Serial)
		b, err := json.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("store: record under request: %w", err)
		}
		return func(p redis.Pipeliner) {
			p.Set(ctx, r.keys.Request(id), b, redis.KeepTTL)
		}, nil
	})
	if err != nil {
		if uerr := r.Unrecord(context.WithoutCancel(ctx), c); uerr != nil {
			return errors.Join(err, fmt.Errorf("store: take back the record of serial %d: %w", c.Serial, uerr))
		}
		return err
	}
	return nil
}

// changeRequest runs one optimistic change of a request: write, given the request as read
// under WATCH (with the keys also, in the same hash tag), returns the commands to run in
// MULTI/EXEC (or an error, returned as is).
func (r *Redis) changeRequest(ctx context.Context, id string, write func(*redis.Tx, ca.AccessRequest) (func(redis.Pipeliner), error), also ...string) error {
	key := r.keys.Request(id)
	for range maxRequestRetries {
		err := r.rdb.Watch(ctx, func(tx *redis.Tx) error {
			req, ok, err := r.getRequest(ctx, tx, id)
			if err != nil {
				return err
			}
			if !ok {
				return errRequestNotFound(id)
			}
			cmds, err := write(tx, req)
			if err != nil {
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				cmds(p)
				return nil
			})
			return err
		}, append([]string{key}, also...)...)
		if errors.Is(err, redis.TxFailedErr) {
			continue
		}
		var e *ca.Error
		if err != nil && !errors.As(err, &e) {
			return fmt.Errorf("store: request %s: %w", id, err)
		}
		return err
	}
	return errRequestContended(id)
}

func sortRequests(rs []ca.AccessRequest) {
	slices.SortStableFunc(rs, func(a, b ca.AccessRequest) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
}

// CreateRequest stores a new request; KindConflict when the ID exists.
func (m *Memory) CreateRequest(_ context.Context, req ca.AccessRequest) error {
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("store: create request: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.requestLocked(req.ID); ok {
		return &ca.Error{Kind: ca.KindConflict, Msg: "access request " + req.ID + " exists"}
	}
	if m.requests == nil {
		m.requests = map[string][]byte{}
	}
	m.requests[req.ID] = b
	return nil
}

// requestLocked decodes a kept request; records that do not decode were never written.
func (m *Memory) requestLocked(id string) (ca.AccessRequest, bool) {
	b, ok := m.requests[id]
	if !ok {
		return ca.AccessRequest{}, false
	}
	var req ca.AccessRequest
	if json.Unmarshal(b, &req) != nil || !req.KeepUntil().After(m.now()) {
		delete(m.requests, id)
		return ca.AccessRequest{}, false
	}
	return req, true
}

// GetRequest returns the request, if kept.
func (m *Memory) GetRequest(_ context.Context, id string) (ca.AccessRequest, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	req, ok := m.requestLocked(id)
	return req, ok, nil
}

// ListRequests returns the kept requests, oldest first.
func (m *Memory) ListRequests(context.Context) ([]ca.AccessRequest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ca.AccessRequest
	for id := range m.requests {
		if req, ok := m.requestLocked(id); ok {
			out = append(out, req)
		}
	}
	sortRequests(out)
	return out, nil
}

// RequestsPage returns a page of the kept requests in ca.RequestCursor order (as
// Redis.RequestsPage).
func (m *Memory) RequestsPage(ctx context.Context, after ca.RequestCursor, limit int) ([]ca.AccessRequest, ca.RequestCursor, error) {
	all, _ := m.ListRequests(ctx)
	slices.SortFunc(all, func(x, y ca.AccessRequest) int { return ca.RequestCursorOf(x).Compare(ca.RequestCursorOf(y)) })
	all = slices.DeleteFunc(all, func(r ca.AccessRequest) bool { return ca.RequestCursorOf(r).Compare(after) <= 0 })
	var next ca.RequestCursor
	if limit > 0 && len(all) > limit {
		all = all[:limit]
		next = ca.RequestCursorOf(all[limit-1])
	}
	return all, next, nil
}

// UpdateRequest applies change to the request and writes it.
func (m *Memory) UpdateRequest(_ context.Context, id string, change func(*ca.AccessRequest) error) (ca.AccessRequest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	req, ok := m.requestLocked(id)
	if !ok {
		return ca.AccessRequest{}, errRequestNotFound(id)
	}
	was := req
	if err := change(&req); err != nil {
		return ca.AccessRequest{}, err
	}
	req.ID, req.CreatedAt = id, was.CreatedAt
	b, err := json.Marshal(req)
	if err != nil {
		return ca.AccessRequest{}, fmt.Errorf("store: update request: %w", err)
	}
	m.requests[id] = b
	return req, nil
}

// RecordUnderRequest records c and appends its serial to the request if check passes.
func (m *Memory) RecordUnderRequest(_ context.Context, c ca.Certificate, id string, check func(ca.AccessRequest) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	req, ok := m.requestLocked(id)
	if !ok {
		return errRequestNotFound(id)
	}
	if err := m.blockedLocked(c); err != nil {
		return err
	}
	if err := check(req); err != nil {
		return err
	}
	req.Serials = append(req.Serials, c.Serial)
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("store: record under request: %w", err)
	}
	m.requests[id] = b
	m.recordLocked(c)
	return nil
}
