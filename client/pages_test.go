package client_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sshca/sshca/client"
)

// TestFollowPagesStopsOnCycle: a faulty server whose next_cursor goes back to one it gave
// before, at once (A, A) or later (A, B, C, A), would keep the typed client (and so the CLI's
// list commands) asking for ever; every list that follows pages stops with an error naming the
// path instead, after as many requests as the cycle is long. A server whose cursors all
// differ is followed to its last page.
func TestFollowPagesStopsOnCycle(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cursors []string // the next_cursor after the first page, the second, ...; "" ends
		loop    int      // with wantErr: after the last, the server goes on from cursors[loop]
		wantErr bool
	}{
		{"same twice", []string{"A", "A"}, 1, true},
		{"back to the first", []string{"A", "B", "C", "A"}, 1, true},
		{"back to the middle", []string{"A", "B", "C", "B"}, 2, true},
		{"all different", []string{"A", "B", "C", ""}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := int(asked.Add(1)) - 1
				next := ""
				if n < len(tc.cursors) {
					next = tc.cursors[n]
				} else if tc.wantErr { // round the cycle again, for ever
					next = tc.cursors[tc.loop+(n-len(tc.cursors))%(len(tc.cursors)-tc.loop)]
				}
				var body any
				switch r.URL.Path {
				case "/v1/revocations":
					body = client.RevocationsResponse{NextCursor: next}
				case "/v1/certs":
					body = client.InventoryResponse{NextCursor: next}
				case "/v1/recordings":
					body = client.RecordingList{NextCursor: next}
				case "/v1/requests":
					body = client.AccessRequestList{NextCursor: next}
				case "/v1/discovery":
					body = client.DiscoveryList{NextCursor: next}
				default:
					http.NotFound(w, r)
					return
				}
				_ = json.NewEncoder(w).Encode(body)
			}))
			defer srv.Close()
			c := client.New(srv.URL)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for _, list := range []struct {
				path string
				call func() error
			}{
				{"/v1/revocations", func() error { _, err := c.Revocations(ctx, "tok"); return err }},
				{"/v1/certs", func() error { _, err := c.Inventory(ctx, "tok", client.CertQuery{}); return err }},
				{"/v1/recordings", func() error { _, err := c.Recordings(ctx, "tok", client.RecordingQuery{}); return err }},
				{"/v1/requests", func() error { _, err := c.RequestsPaged(ctx, "tok", client.RequestQuery{}); return err }},
				{"/v1/discovery", func() error { _, err := c.Discoveries(ctx, "tok", 0, nil); return err }},
			} {
				asked.Store(0)
				err := list.call()
				if ctx.Err() != nil {
					t.Fatalf("GET %s: still asking after 10 s (%d requests)", list.path, asked.Load())
				}
				if !tc.wantErr {
					if err != nil || asked.Load() != int64(len(tc.cursors)) {
						t.Errorf("GET %s: %v after %d requests, want every one of %d pages", list.path, err, asked.Load(), len(tc.cursors))
					}
					continue
				}
				if err == nil || !strings.Contains(err.Error(), list.path) || !strings.Contains(err.Error(), "cursor it gave before") {
					t.Errorf("GET %s: %v, want an error naming the path and the repeated cursor", list.path, err)
				}
				if asked.Load() != int64(len(tc.cursors)) {
					t.Errorf("GET %s: %d requests, want %d (stopped at the first repeated cursor)", list.path, asked.Load(), len(tc.cursors))
				}
			}
		})
	}
}
