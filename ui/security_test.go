package ui

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func TestLocalPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/ui/", "/ui/"},
		{"/ui/access?identity=bob&principal=root", "/ui/access?identity=bob&principal=root"},
		{"/ui/requests/req_ABC", "/ui/requests/req_ABC"},
		// Each of these gets past a naive "starts with /" check and leaves the console.
		{"//evil.example/ui/", "/ui/"},
		{"/ui//evil.example", "/ui/"},
		{"https://evil.example/ui/", "/ui/"},
		{"/\\evil.example", "/ui/"},
		{"/ui/\\\\evil.example", "/ui/"},
		{"/ui/../v1/requests", "/ui/"},
		{"/ui/%2e%2e/v1/requests", "/ui/"},
		{"/ui/%2E%2E%2Fv1", "/ui/"},
		{"/ui/\r\nSet-Cookie: x=y", "/ui/"},
		{"/ui/\tx", "/ui/"},
		{"javascript:alert(1)", "/ui/"},
		{"/v1/requests", "/ui/"},
		{"", "/ui/"},
		{"ui/", "/ui/"},
		// http.Redirect cleans everything before the first "?", a fragment's dot segments too:
		// these were kept and sent the browser to /v1/certs.
		{"/ui/x#/../../v1/certs", "/ui/"},
		{"/ui/#/..", "/ui/"},
		{"/ui/x?a=b#c", "/ui/"},
	} {
		if got := LocalPath(tc.in); got != tc.want {
			t.Errorf("LocalPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if loc := redirectTo(tc.in); !strings.HasPrefix(loc, "/ui/") {
			t.Errorf("a return path %q redirects to %q, off the console", tc.in, loc)
		}
	}
}

// redirectTo is where the callback's http.Redirect sends the browser for the return path p.
func redirectTo(p string) string {
	w := httptest.NewRecorder()
	http.Redirect(w, httptest.NewRequest(http.MethodGet, "/ui/callback", nil), LocalPath(p), http.StatusSeeOther)
	return w.Header().Get("Location")
}

func FuzzLocalPath(f *testing.F) {
	for _, s := range []string{"/ui/", "//evil", "/ui/../x", "/ui/%2e%2e/x", "https://x/ui/", "/ui/a?b=//c", "/ui/x#/../../v1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := LocalPath(s)
		u, err := url.Parse(got)
		if err != nil || u.Scheme != "" || u.Host != "" || len(got) < 4 || got[:4] != "/ui/" || got[4:] != "" && got[4] == '/' {
			t.Fatalf("LocalPath(%q) = %q, which is not a console path", s, got)
		}
		// Resolved against the console's origin, the result stays on it.
		base, _ := url.Parse("https://ca.example.com/ui/x")
		if r := base.ResolveReference(u); r.Host != "ca.example.com" {
			t.Fatalf("LocalPath(%q) = %q resolves to host %q", s, got, r.Host)
		}
		// And where the callback's redirect really sends the browser stays on the console.
		if loc := redirectTo(s); !strings.HasPrefix(loc, "/ui/") || strings.HasPrefix(loc, "/ui//") {
			t.Fatalf("LocalPath(%q) = %q redirects to %q", s, got, loc)
		}
	})
}

func TestCookieFor(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want Cookie
	}{
		{"https://ca.example.com", Cookie{Name: "__Host-sshca", Login: "__Host-sshca-login", Secure: true}},
		{"http://127.0.0.1:8089", Cookie{Name: "sshca-dev", Login: "sshca-dev-login", Secure: false}},
	} {
		u, _ := url.Parse(tc.url)
		if got := CookieFor(u); got != tc.want {
			t.Errorf("CookieFor(%s) = %+v, want %+v", tc.url, got, tc.want)
		}
	}
}

func TestNewRefusesPlainHTTPOffLoopback(t *testing.T) {
	for _, u := range []string{"http://ca.example.com", "http://10.0.0.1:8089", "https://ca.example.com/ui", "ca.example.com", "http://127.0.0.1.evil.example"} {
		if _, err := New(Options{PublicURL: u, Issuer: "https://idp", ClientID: "sshca", Requests: &fakeRequests{}}); err == nil {
			t.Errorf("New accepted public URL %q", u)
		}
	}
	for _, u := range []string{"https://ca.example.com", "http://127.0.0.1:8089", "http://localhost:1", "http://[::1]:2"} {
		if _, err := New(Options{PublicURL: u, Issuer: "https://idp", ClientID: "sshca", Requests: &fakeRequests{}}); err != nil {
			t.Errorf("New refused public URL %q: %v", u, err)
		}
	}
}
