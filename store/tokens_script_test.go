package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
)

// TestTokenScriptBySHA: the token ledger's script goes by its SHA (EVALSHA), never by its body,
// once the server has it; a server without it (a first use, a restart, SCRIPT FLUSH) still
// spends each token exactly once, through UseToken and Admit, runs the ledger's script once
// per spend (its mark counts one bump per token), and a refusal found in the same pipeline as
// the NOSCRIPT still refuses. Real redis-server: miniredis does not count commands.
func TestTokenScriptBySHA(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	now := time.Now()
	r := NewRedis(rdb, RedisOptions{Now: func() time.Time { return now }})
	caKey, key, revoked := testenv.PublicKey(t), testenv.PublicKey(t), testenv.PublicKey(t)
	tok := func(id string) ca.TokenUse {
		return ca.TokenUse{SingleUse: true, ID: "iss|" + id, IssuedAt: now, Expiry: now.Add(time.Minute)}
	}
	admit := func(k ca.AdmissionRequest) (ca.Admitted, error) {
		k.CAKey, k.Identities = caKey, []string{"alice@idp"}
		return r.Admit(ctx, k)
	}
	bumps := func() int {
		n, err := rdb.HGet(ctx, r.mark(TagTokens), "n").Int()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		return n
	}
	flush := func() {
		t.Helper()
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	spend := []struct {
		name string
		use  func(id string) (bool, error)
	}{
		{"UseToken", func(id string) (bool, error) {
			return r.UseToken(ctx, tok(id).ID, now, now.Add(time.Minute))
		}},
		{"Admit", func(id string) (bool, error) {
			res, err := admit(ca.AdmissionRequest{Key: key, Token: tok(id)})
			if err == nil && res.Refusal != "" {
				t.Fatalf("Admit refused %q: %s", id, res.Refusal)
			}
			return res.Fresh, err
		}},
	}
	for i, s := range spend {
		for _, forgotten := range []bool{true, false} {
			id := s.name + "-" + strconv.Itoa(i) + "-" + strconv.FormatBool(forgotten)
			if forgotten {
				flush()
			}
			before := bumps()
			if ok, err := s.use(id); err != nil || !ok {
				t.Fatalf("%s, script forgotten %v: first use = %v %v, want fresh", s.name, forgotten, ok, err)
			}
			if got := bumps() - before; got != 1 {
				t.Fatalf("%s, script forgotten %v: the ledger's mark was bumped %d times by one spend, want 1", s.name, forgotten, got)
			}
			if forgotten {
				flush()
			}
			if ok, err := s.use(id); err != nil || ok {
				t.Fatalf("%s, script forgotten %v: replay = %v %v, want not fresh", s.name, forgotten, ok, err)
			}
		}
	}

	// Once loaded, by SHA only: count the server's EVAL and EVALSHA over a few spends.
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if ok, err := spend[i%2].use("steady-" + strconv.Itoa(i)); err != nil || !ok {
			t.Fatalf("steady spend %d = %v %v", i, ok, err)
		}
	}
	stats, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if calls(stats, "evalsha") != 3 || calls(stats, "eval") != 0 {
		t.Fatalf("3 spends ran EVALSHA %d and EVAL %d times, want 3 and 0:\n%s", calls(stats, "evalsha"), calls(stats, "eval"), stats)
	}

	// A refusal read in the same pipeline as a NOSCRIPT is still a refusal, not an error.
	if _, err := r.Revoke(ctx, caKey, []ca.RevocationEntry{{Kind: ca.RevokedKey, Value: revocation.KeyEntry(revoked), Expiry: now.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	flush()
	if res, err := admit(ca.AdmissionRequest{Key: revoked, Token: tok("revoked")}); err != nil || res.Refusal == "" {
		t.Fatalf("revoked key, script forgotten = %+v %v, want a refusal", res, err)
	}
}

// calls is the calls= count of cmdstat_<name> in INFO commandstats.
func calls(info, name string) int {
	for line := range strings.Lines(info) {
		rest, ok := strings.CutPrefix(line, "cmdstat_"+name+":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		return n
	}
	return 0
}

// TestMarkedWriteArgsFollowGeneration: the boxed generation that marked writes reuse is
// replaced when the generation changes (a rebuild raises the epoch, a new store has another
// id): a write never carries the generation before.
func TestMarkedWriteArgsFollowGeneration(t *testing.T) {
	r := NewRedis(nil, RedisOptions{})
	exp := expectation{seen: true, n: 7}
	for _, g := range []Generation{{ID: "a", Epoch: 0}, {ID: "a", Epoch: 0}, {ID: "a", Epoch: 1}, {ID: "b", Epoch: 1}, {ID: "a", Epoch: 0}} {
		got := (&MarkedWrite{r: r, g: g, exp: exp}).Args()
		if want := markArgs(g, exp); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("generation %+v: Args = %v, want %v", g, got, want)
		}
	}
}
