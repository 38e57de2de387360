package services_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
)

func (f *fakeService) Unrevoke(_ context.Context, _ string, req ca.UnrevokeRequest) (ca.UnrevokeResult, error) {
	if f.err != nil {
		return ca.UnrevokeResult{}, f.err
	}
	return ca.UnrevokeResult{Lifted: req.PublicKey != nil, Version: 7}, nil
}

// TestUnrevokeEndpoint: POST /v1/revocations/lift takes a public key (or a certificate, whose
// key it lifts) and a reason; a malformed key is 400, a policy refusal 403.
func TestUnrevokeEndpoint(t *testing.T) {
	svc := &fakeService{}
	srv := newServer(t, svc)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(svc.key.PublicKey())))
	resp, body := post(t, srv.URL+"/v1/revocations/lift", `{"public_key":"`+line+`","reason":"found"}`, nil)
	if resp.StatusCode != http.StatusOK || body["lifted"] != true || body["version"] != "7" {
		t.Errorf("lift: %d %v", resp.StatusCode, body)
	}
	resp, body = post(t, srv.URL+"/v1/revocations/lift", `{"public_key":"not a key","reason":"found"}`, nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed key: %d %v", resp.StatusCode, body)
	}
	svc.err = ca.Denied("policy denied the request", "admins only")
	resp, body = post(t, srv.URL+"/v1/revocations/lift", `{"public_key":"`+line+`","reason":"found"}`, nil)
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("denied: %d %v", resp.StatusCode, body)
	}
}
