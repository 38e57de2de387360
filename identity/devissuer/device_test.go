package devissuer

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDeviceAuthorizationsBounded: the device authorization endpoint wants only the public
// client ID, so what anyone can start there is bounded: MaxPendingDevices pending at once,
// the next one refused with a 503 that says why, and room again once they expire on the
// issuer's clock (not only when polled). A refused start stores nothing.
func TestDeviceAuthorizationsBounded(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	iss, err := New("http://127.0.0.1/dev/oidc", Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	h := iss.Handler()
	start := func() (int, string) {
		req := httptest.NewRequest(http.MethodPost, "/device_authorization", strings.NewReader(url.Values{"client_id": {"sshca"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	pending := func() int {
		iss.devices.mu.Lock()
		defer iss.devices.mu.Unlock()
		return len(iss.devices.byCode)
	}
	for i := range MaxPendingDevices {
		if code, body := start(); code != http.StatusOK {
			t.Fatalf("start %d: %d %s", i, code, body)
		}
	}
	code, body := start()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "temporarily_unavailable") || !strings.Contains(body, "try again later") {
		t.Fatalf("start past the bound: %d %s", code, body)
	}
	if n := pending(); n != MaxPendingDevices {
		t.Fatalf("%d pending after a refused start, want %d", n, MaxPendingDevices)
	}
	mu.Lock()
	now = now.Add(DeviceCodeTTL + time.Second)
	mu.Unlock()
	if code, body := start(); code != http.StatusOK {
		t.Fatalf("start after the others expired: %d %s", code, body)
	}
	if n := pending(); n != 1 {
		t.Fatalf("%d pending after the others expired, want 1 (expired ones dropped)", n)
	}
}
