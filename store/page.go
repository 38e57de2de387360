package store

import (
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// pageScript reads one page of a sorted set in its order (score, then member bytes): the live
// index of certificates (Keys.ShardLiveCerts, and each identity's), the index of recordings
// (Keys.RecordingIndex), of access requests (Keys.Requests) and a revocation scope's entries
// (Keys.ScopeEntries, permanent ones scored +inf: compared through scoreLua's score, and the
// members before a score counted from the top, as miniredis reads an exclusive "(+inf" as
// inclusive). KEYS the index; ARGV the highest score left out whatever the cursor (as ZCOUNT's
// max: now in unix ms for what expires; "(since" or "-inf" for recordings), the cursor's score
// ("+inf" too) and member ("" for the start), the limit (0: all). Answers {more, {member,
// score, ...}}: the members after the cursor and the left-out head, at most limit, and 1 when
// members are left after them. The position is found by rank in the same script as the range
// is read, so nothing added or pruned in between can shift it: the cursor's rank when its
// member is there with its score; else (pruned with everything up to its score, lifted, or in
// another shard's index) the members before its position counted by score, and among those of
// its own score by member, found by halving their ranks (a certificate's ValidBefore is in
// whole seconds, so one score holds a second's issuance: O(log² n) where reading them was
// O(n)).
var pageScript = redis.NewScript(scoreLua + `
-- a <= b byte by byte, as Redis orders the members of one score (Lua's own <= follows the locale)
local function le(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local key = KEYS[1]
local start = redis.call('ZCOUNT', key, '-inf', ARGV[1])
if ARGV[3] ~= '' then
  local pos
  local r = redis.call('ZRANK', key, ARGV[3])
  local sc = redis.call('ZSCORE', key, ARGV[3])
  if r and score(sc) == score(ARGV[2]) then
    pos = r + 1
  else
    -- The members of the cursor's score hold ranks lo to hi-1, in member order: the first
    -- after the cursor's member is found by halving (a certificate's ValidBefore is in whole
    -- seconds, so one score holds a second's issuance; reading them all cost 28 ms at 20,000).
    -- lo counts from the top: miniredis reads an exclusive '(+inf' as inclusive.
    local lo = redis.call('ZCARD', key) - redis.call('ZCOUNT', key, ARGV[2], '+inf')
    local hi = redis.call('ZCOUNT', key, '-inf', ARGV[2])
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if le(redis.call('ZRANGE', key, mid, mid)[1], ARGV[3]) then lo = mid + 1 else hi = mid end
    end
    pos = lo
  end
  if pos > start then start = pos end
end
local limit = tonumber(ARGV[4])
local stop = -1
if limit > 0 then stop = start + limit - 1 end
local page = redis.call('ZRANGE', key, start, stop, 'WITHSCORES')
local more = 0
if limit > 0 and redis.call('ZCARD', key) > stop + 1 then more = 1 end
return {more, page}
`)

// pageMember is one member of a page that pageScript read, with its score.
type pageMember struct {
	member string
	score  float64 // +Inf for a permanent revocation entry
}

// pageAnswer is pageScript's answer: the page's members in order, and whether members are
// left after them.
func pageAnswer(cmd *redis.Cmd) ([]pageMember, bool, error) {
	res, err := cmd.Slice()
	if err != nil {
		return nil, false, err
	}
	var flat []any
	if len(res) == 2 {
		flat, _ = res[1].([]any)
	}
	if len(res) != 2 || len(flat)%2 != 0 {
		return nil, false, fmt.Errorf("unexpected answer %v", res)
	}
	more, _ := res[0].(int64)
	page := make([]pageMember, 0, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		m, _ := flat[i].(string)
		sc, _ := flat[i+1].(string)
		score, err := strconv.ParseFloat(sc, 64) // "inf" too
		if err != nil {
			return nil, false, fmt.Errorf("bad score %q in index", sc)
		}
		page = append(page, pageMember{member: m, score: score})
	}
	return page, more == 1, nil
}
