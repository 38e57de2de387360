package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
	"github.com/sshca/sshca/revocation"
	"github.com/sshca/sshca/store"
)

// TestRevocationsListPagesEndToEnd: GET /v1/revocations against `sshca serve` on a real
// redis-server, 1,000 entries a page over 2,000 revoked under the user CA key (key IDs of
// many expiries and permanent bans) and 800 under the host CA key. Between pages, entries are
// revoked after the position (listed) and before it (not), the first page's short-lived ones
// expire and a ban not yet listed is lifted (not listed): every entry revoked throughout is
// listed once, in its own scope. An old client that sends no limit gets the first page (1,000
// entries and a next_cursor), and the typed client follows every page.
func TestRevocationsListPagesEndToEnd(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	base := startServe(t, cfg)
	auditor := minter(t, idp)(map[string]any{"sub": "u-audit", "preferred_username": "audit", "email": "audit@example.com",
		"email_verified": true, "groups": []string{"auditors"}, "auth_time": time.Now().Unix()})

	ctx := context.Background()
	c := client.New(base)
	userCA, hostCA := caKeys(t, c)
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	db := store.NewRedis(rdb, cfg.Redis.StoreOptions())
	n := 0
	revoke := func(caKey ssh.PublicKey, count int, expiry func(i int) time.Time) map[string]bool {
		t.Helper()
		out := map[string]bool{}
		var es []ca.RevocationEntry
		for i := range count {
			n++
			e := ca.RevocationEntry{Kind: ca.RevokedKeyID, Value: fmt.Sprintf("bulk-%05d#%d", n, n)}
			if exp := expiry(i); exp.IsZero() {
				e = ca.RevocationEntry{Kind: ca.RevokedKey, Value: revocation.KeyEntry(testenv.PublicKey(t))}
			} else {
				e.Expiry = exp
			}
			es = append(es, e)
			out[e.Value] = true
		}
		if _, err := db.Revoke(ctx, caKey, es); err != nil {
			t.Fatal(err)
		}
		return out
	}
	now := time.Now().Truncate(time.Second)
	shortUntil := now.Add(4 * time.Second)
	short := revoke(userCA, 600, func(int) time.Time { return shortUntil })
	long := revoke(userCA, 1370, func(i int) time.Time { return now.Add(time.Hour + time.Duration(i/7)*time.Second) })
	banned := revoke(userCA, 30, func(int) time.Time { return time.Time{} })
	hosts := revoke(hostCA, 800, func(i int) time.Time { return now.Add(2*time.Hour + time.Duration(i)*time.Second) })
	var liftLater string
	for v := range banned {
		liftLater = v
		break
	}

	// An old client: no limit, no cursor.
	oldPage := getPageJSON[client.RevocationsResponse](t, base+"/v1/revocations", auditor)
	if got := len(oldPage.UserCA.Entries) + len(oldPage.HostCA.Entries); got != client.DefaultPageLimit || oldPage.NextCursor == "" || oldPage.HostCA.Version == "" {
		t.Errorf("a request without limit: %d entries, next %q, host version %q; want the first %d and a next_cursor", got, oldPage.NextCursor, oldPage.HostCA.Version, client.DefaultPageLimit)
	}

	seen := map[string]int{}
	inScope := map[string]string{}
	after, before := map[string]bool{}, map[string]bool{}
	cursor := ""
	pages := 0
	for {
		page, err := c.RevocationsPage(ctx, auditor, 1000, cursor)
		if err != nil {
			t.Fatalf("page %d: %v", pages+1, err)
		}
		pages++
		if got := len(page.UserCA.Entries) + len(page.HostCA.Entries); got > 1000 {
			t.Fatalf("page %d holds %d", pages, got)
		}
		if page.UserCA.Fingerprint != ssh.FingerprintSHA256(userCA) || page.HostCA.Fingerprint != ssh.FingerprintSHA256(hostCA) {
			t.Fatalf("page %d: scopes of %s and %s", pages, page.UserCA.Fingerprint, page.HostCA.Fingerprint)
		}
		for scope, es := range map[string][]client.RevocationEntry{"user": page.UserCA.Entries, "host": page.HostCA.Entries} {
			for _, e := range es {
				seen[e.Value]++
				inScope[e.Value] = scope
			}
		}
		switch pages {
		case 1:
			// The first page's short-lived entries expire, and the next revocation prunes them.
			time.Sleep(time.Until(shortUntil.Add(100 * time.Millisecond)))
			for v := range revoke(userCA, 30, func(int) time.Time { return now.Add(90 * time.Minute) }) {
				after[v] = true
			}
		case 2:
			for v := range revoke(userCA, 30, func(int) time.Time { return now.Add(30 * time.Minute) }) {
				before[v] = true
			}
			k, err := revocation.ParseKeyEntry(liftLater)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.LiftKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
		if pages > 10 {
			t.Fatal("no last page")
		}
	}
	for v, k := range seen {
		if k != 1 {
			t.Errorf("entry %s listed %d times", v, k)
		}
	}
	check := func(what, scope string, set map[string]bool, want bool) {
		t.Helper()
		missing, extra, misplaced := 0, 0, 0
		for v := range set {
			switch {
			case v == liftLater:
			case want && seen[v] == 0:
				missing++
			case !want && seen[v] > 0:
				extra++
			case want && inScope[v] != scope:
				misplaced++
			}
		}
		if missing+extra+misplaced > 0 {
			t.Errorf("%s: %d of %d not listed, %d listed that should not be, %d in the wrong scope", what, missing, len(set), extra, misplaced)
		}
	}
	check("the first page's, live then", "user", short, true)
	check("revoked throughout", "user", long, true)
	check("banned throughout", "user", banned, true)
	check("the host CA's", "host", hosts, true)
	check("revoked after the position", "user", after, true)
	check("revoked before the position", "user", before, false)
	if seen[liftLater] != 0 {
		t.Errorf("the ban lifted before its page was listed")
	}
	if pages != 3 {
		t.Errorf("%d pages, want 3 (2,030 user entries then 800 host entries, 1,000 a page)", pages)
	}

	// The typed client follows the pages: every entry live now, once.
	all, err := c.Revocations(ctx, auditor)
	if err != nil {
		t.Fatal(err)
	}
	wantUser := len(long) + len(banned) - 1 + len(after) + len(before)
	if len(all.UserCA.Entries) != wantUser || len(all.HostCA.Entries) != len(hosts) || all.NextCursor != "" {
		t.Errorf("Revocations: %d user and %d host entries, want %d and %d", len(all.UserCA.Entries), len(all.HostCA.Entries), wantUser, len(hosts))
	}

	// So does sshca revocations list, with progress on stderr.
	tokenFile := filepath.Join(t.TempDir(), "auditor.token")
	writeFile(t, tokenFile, auditor)
	out, err := runCLI(t, "", "revocations", "list", "--json", "--page-size", "700", "--server", base, "--token-file", tokenFile)
	if err != nil {
		t.Fatalf("revocations list: %v\n%.300s", err, out)
	}
	var listed client.RevocationsResponse
	if err := json.NewDecoder(strings.NewReader(out[strings.Index(out, "{"):])).Decode(&listed); err != nil {
		t.Fatalf("revocations list --json: %v\n%.300s", err, out)
	}
	if len(listed.UserCA.Entries) != wantUser || len(listed.HostCA.Entries) != len(hosts) || !strings.Contains(out, "entries in 4 pages so far") {
		t.Errorf("revocations list: %d user and %d host entries, want %d and %d\n%.300s", len(listed.UserCA.Entries), len(listed.HostCA.Entries), wantUser, len(hosts), out)
	}
	table, err := runCLI(t, "", "revocations", "list", "--server", base, "--token-file", tokenFile)
	if err != nil || !strings.Contains(table, "host  key_id") || !strings.Contains(table, "lifted") {
		t.Errorf("revocations list (table): %v\n%.500s", err, table)
	}
	if out, err := runCLI(t, "", "revocations", "list", "--page-size", "0", "--server", base, "--token-file", tokenFile); err == nil ||
		!strings.Contains(err.Error(), "--page-size") {
		t.Errorf("--page-size 0: %v\n%s", err, out)
	}
}

// caKeys are the user and host CA keys serve publishes (GET /v1/ca/user.pub, the
// @cert-authority line of GET /v1/ca/known_hosts).
func caKeys(t *testing.T, c *client.Client) (user, host ssh.PublicKey) {
	t.Helper()
	ctx := context.Background()
	users, err := c.UserCAKeys(ctx)
	if err != nil || len(users) != 1 {
		t.Fatalf("user CA keys: %d, %v", len(users), err)
	}
	kh, err := c.KnownHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(kh, "\n") {
		if rest, ok := strings.CutPrefix(line, "@cert-authority "); ok {
			_, rest, _ = strings.Cut(rest, " ")
			if host, _, _, _, err = ssh.ParseAuthorizedKey([]byte(rest)); err != nil {
				t.Fatalf("known_hosts line %q: %v", line, err)
			}
			return users[0], host
		}
	}
	t.Fatalf("no @cert-authority line in\n%s", kh)
	return nil, nil
}

// getPageJSON GETs url with the bearer token, as a client that knows nothing of pages would, and
// decodes the answer.
func getPageJSON[T any](t *testing.T, url, token string) T {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out T
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &out) != nil {
		t.Fatalf("GET %s: %d %.300s", url, resp.StatusCode, b)
	}
	return out
}

// TestRequestsListPagesEndToEnd: GET /v1/requests against `sshca serve` on a real
// redis-server, 1,000 a page over 2,500 kept requests of the caller. Between pages requests
// are created after the position (listed) and before it (not), the first page's, at the
// end of their retention, expire, and requests are decided: approved with a window that moves
// their KeepUntil past every other request's, some already listed, some not yet (before stop
// 17 the listed ones came again on the last page): every request kept throughout is listed
// once. The filters
// keep working with pages (pending), an old client gets the first page with a next_cursor,
// and `sshca request list` follows every page.
func TestRequestsListPagesEndToEnd(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	base := startServe(t, cfg)
	tok := minter(t, idp)(map[string]any{"sub": "u-alice", "preferred_username": "alice", "email": "alice@example.com",
		"email_verified": true, "groups": []string{"developers"}, "auth_time": time.Now().Unix()})
	alice := ca.Identity{Issuer: idp.URL(), Subject: "u-alice", Email: "alice@example.com", Username: "alice"}

	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	db := store.NewRedis(rdb, cfg.Redis.StoreOptions())
	n := 0
	create := func(count int, pendingUntil func(i int) time.Time, status ca.AccessRequestState) map[string]bool {
		t.Helper()
		out := map[string]bool{}
		for i := range count {
			n++
			id := ca.NewAccessRequestID()
			pu := pendingUntil(i)
			req := ca.AccessRequest{ID: id, Requester: alice, Principals: []string{"root"}, TTLSeconds: 1800, Reason: fmt.Sprintf("bulk %d", n),
				CreatedAt: pu.Add(-time.Hour), PendingUntil: pu, ApprovalsRequired: 1, Status: status}
			if status == ca.RequestDenied {
				req.DecidedAt = pu.Add(-time.Minute)
			}
			if err := db.CreateRequest(ctx, req); err != nil {
				t.Fatal(err)
			}
			out[id] = true
		}
		return out
	}
	now := time.Now().Truncate(time.Second)
	// Kept until a few seconds from now: their retention ends while the listing pages.
	shortUntil := now.Add(4 * time.Second)
	short := create(600, func(int) time.Time { return shortUntil.Add(-ca.AccessRequestRetention) }, ca.RequestDenied)
	long := create(1500, func(i int) time.Time { return now.Add(time.Hour + time.Duration(i/7)*time.Second) }, ca.RequestPending)
	denied := create(400, func(i int) time.Time {
		return now.Add(3*time.Hour + time.Duration(i)*time.Second - ca.AccessRequestRetention)
	}, ca.RequestDenied)

	oldPage := getPageJSON[client.AccessRequestList](t, base+"/v1/requests", tok)
	if len(oldPage.Requests) != client.DefaultPageLimit || oldPage.NextCursor == "" {
		t.Errorf("a request without limit: %d requests, next %q; want the first %d and a next_cursor", len(oldPage.Requests), oldPage.NextCursor, client.DefaultPageLimit)
	}

	c := client.New(base)
	seen := map[string]int{}
	after, before, decided := map[string]bool{}, map[string]bool{}, map[string]bool{}
	cursor := ""
	pages := 0
	for {
		page, err := c.RequestsPage(ctx, tok, client.RequestQuery{Limit: 1000}, cursor)
		if err != nil {
			t.Fatalf("page %d: %v", pages+1, err)
		}
		pages++
		if len(page.Requests) > 1000 {
			t.Fatalf("page %d holds %d", pages, len(page.Requests))
		}
		for _, r := range page.Requests {
			seen[r.ID]++
		}
		switch pages {
		case 1:
			time.Sleep(time.Until(shortUntil.Add(100 * time.Millisecond)))
			for id := range create(30, func(int) time.Time { return now.Add(4 * time.Hour) }, ca.RequestPending) {
				after[id] = true
			}
		case 2:
			for id := range create(30, func(int) time.Time { return now.Add(30 * time.Minute) }, ca.RequestPending) {
				before[id] = true
			}
			// Decisions: 20 requests of this page and 20 not yet listed.
			var listed []string
			for _, r := range page.Requests {
				if long[r.ID] && len(listed) < 20 {
					listed = append(listed, r.ID)
				}
			}
			for id := range long {
				if seen[id] == 0 && len(decided) < 20 {
					decided[id] = true
				}
			}
			for _, id := range listed {
				decided[id] = true
			}
			for id := range decided {
				if _, err := db.UpdateRequest(ctx, id, func(r *ca.AccessRequest) error {
					r.Status, r.DecidedAt, r.DecidedBy, r.NotAfter = ca.RequestApproved, time.Now(), "bob", now.Add(5*time.Hour)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
		if pages > 10 {
			t.Fatal("no last page")
		}
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("request %s listed %d times", id, k)
		}
	}
	checkListed(t, seen, "the first page's, kept then", short, true)
	checkListed(t, seen, "kept throughout", long, true)
	checkListed(t, seen, "denied, kept throughout", denied, true)
	checkListed(t, seen, "created after the position", after, true)
	checkListed(t, seen, "created before the position", before, false)
	checkListed(t, seen, "decided between pages", decided, true)
	if len(decided) != 40 {
		t.Errorf("%d requests decided between pages, want 40", len(decided))
	}
	if pages != 3 {
		t.Errorf("%d pages, want 3", pages)
	}

	// The filter applies to each page: only pending ones, every one of them, each once.
	pending, err := c.RequestsPaged(ctx, tok, client.RequestQuery{Pending: true, Limit: 700})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, r := range pending {
		if r.State != "pending" || ids[r.ID] {
			t.Fatalf("pending list: %s %s (again: %v)", r.ID, r.State, ids[r.ID])
		}
		ids[r.ID] = true
	}
	if want := len(long) - len(decided) + len(after) + len(before); len(ids) != want {
		t.Errorf("pending: %d requests, want %d", len(ids), want)
	}

	// The CLI follows the pages.
	tokenFile := filepath.Join(t.TempDir(), "alice.token")
	writeFile(t, tokenFile, tok)
	out, err := runCLI(t, "", "request", "list", "--json", "--page-size", "400", "--server", base, "--token-file", tokenFile)
	if err != nil {
		t.Fatalf("request list: %v\n%.300s", err, out)
	}
	var listed []client.AccessRequest
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &listed); err != nil {
		t.Fatalf("request list --json: %v\n%.300s", err, out)
	}
	if want := len(long) + len(denied) + len(after) + len(before); len(listed) != want {
		t.Errorf("request list: %d requests, want %d", len(listed), want)
	}
	if out, err := runCLI(t, "", "request", "list", "--page-size", "10001", "--server", base, "--token-file", tokenFile); err == nil ||
		!strings.Contains(err.Error(), "--page-size") {
		t.Errorf("--page-size 10001: %v\n%s", err, out)
	}
}

// checkListed fails t when a listing that saw seen (how many times each ID came) missed an
// ID of set (want) or listed one (!want).
func checkListed(t *testing.T, seen map[string]int, what string, set map[string]bool, want bool) {
	t.Helper()
	missing, extra := 0, 0
	for id := range set {
		switch {
		case want && seen[id] == 0:
			missing++
		case !want && seen[id] > 0:
			extra++
		}
	}
	if missing+extra > 0 {
		t.Errorf("%s: %d of %d not listed, %d listed that should not be", what, missing, len(set), extra)
	}
}

// TestDiscoveryListPagesEndToEnd: GET /v1/discovery against `sshca serve` on a real
// redis-server, 1,000 hosts a page over 2,300: 300 of them reported by a replica that kept no
// index of names (in the hash alone), the rest through the store. Between pages hosts report
// after the position (listed), before it (not) and again (listed once): every host reported
// throughout is listed once, by name. An old client gets the first page with a next_cursor,
// and `sshca discover report` follows every page.
func TestDiscoveryListPagesEndToEnd(t *testing.T) {
	r := testenv.StartRedis(t)
	idp := startIssuer(t, "sshca")
	cfg := serveConfig(t, r.Addr, identity.IssuerConfig{IssuerURL: idp.URL(), Audiences: []string{"sshca"}})
	base := startServe(t, cfg)
	admin := minter(t, idp)(map[string]any{"sub": "u-admin", "preferred_username": "admin", "email": "admin@example.com",
		"email_verified": true, "groups": []string{"sshca-admins"}, "auth_time": time.Now().Unix()})

	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer rdb.Close()
	db := store.NewRedis(rdb, cfg.Redis.StoreOptions())
	report := func(hosts ...string) {
		t.Helper()
		for _, h := range hosts {
			if err := db.PutDiscovery(ctx, ca.DiscoveryRecord{Host: h, Received: time.Now().UTC(), Report: json.RawMessage(`{"host":"` + h + `","keys":[]}`)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	names := func(prefix string, n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("%s%05d.example.com", prefix, i))
		}
		return out
	}
	old := names("m-old-", 300)
	for _, h := range old {
		b, _ := json.Marshal(ca.DiscoveryRecord{Host: h, Received: time.Now().UTC(), Report: json.RawMessage(`{"host":"` + h + `","keys":[]}`)})
		if err := rdb.HSet(ctx, store.Keys{}.Discovery(), h, b).Err(); err != nil {
			t.Fatal(err)
		}
	}
	fleet := names("web-", 2000)
	report(fleet...)

	oldPage := getPageJSON[client.DiscoveryList](t, base+"/v1/discovery", admin)
	if len(oldPage.Hosts) != client.DefaultPageLimit || oldPage.NextCursor == "" {
		t.Errorf("a request without limit: %d hosts, next %q; want the first %d and a next_cursor", len(oldPage.Hosts), oldPage.NextCursor, client.DefaultPageLimit)
	}
	c := client.New(base)
	seen := map[string]int{}
	after, before := names("zz-", 20), names("a-", 20)
	cursor, pages := "", 0
	for {
		page, err := c.DiscoveriesPage(ctx, admin, 1000, cursor)
		if err != nil {
			t.Fatalf("page %d: %v", pages+1, err)
		}
		pages++
		if len(page.Hosts) > 1000 {
			t.Fatalf("page %d holds %d", pages, len(page.Hosts))
		}
		for _, h := range page.Hosts {
			seen[h.Host]++
		}
		if pages == 1 {
			report(after...)
			report(before...)
			report(page.Hosts[0].Host, page.Hosts[999].Host)
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
		if pages > 10 {
			t.Fatal("no last page")
		}
	}
	for h, k := range seen {
		if k != 1 {
			t.Errorf("host %s listed %d times", h, k)
		}
	}
	set := func(hs []string) map[string]bool {
		m := map[string]bool{}
		for _, h := range hs {
			m[h] = true
		}
		return m
	}
	checkListed(t, seen, "reported by a replica without the index", set(old), true)
	checkListed(t, seen, "reported throughout", set(fleet), true)
	checkListed(t, seen, "reported after the position", set(after), true)
	checkListed(t, seen, "reported before the position", set(before), false)
	if pages != 3 {
		t.Errorf("%d pages, want 3", pages)
	}

	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	writeFile(t, tokenFile, admin)
	out, err := runCLI(t, "", "discover", "report", "--format", "json", "--page-size", "500", "--server", base, "--token-file", tokenFile)
	if err != nil {
		t.Fatalf("discover report: %v\n%.300s", err, out)
	}
	var listed struct{ Hosts []client.DiscoveryRecord }
	if err := json.NewDecoder(strings.NewReader(out[strings.Index(out, "{"):])).Decode(&listed); err != nil {
		t.Fatalf("discover report --format json: %v\n%.300s", err, out)
	}
	if want := len(old) + len(fleet) + len(after) + len(before); len(listed.Hosts) != want {
		t.Errorf("discover report: %d hosts, want %d", len(listed.Hosts), want)
	}
	if !strings.Contains(out, "hosts in 5 pages so far") {
		t.Errorf("no progress on stderr:\n%.300s", out)
	}
}
