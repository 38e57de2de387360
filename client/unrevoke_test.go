package client_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

func (a *api) Unrevoke(_ context.Context, token string, req ca.UnrevokeRequest) (ca.UnrevokeResult, error) {
	a.token, a.keyCall = token, "unrevoke "+ssh.FingerprintSHA256(req.PublicKey)+" "+req.Reason
	if a.err != nil {
		return ca.UnrevokeResult{}, a.err
	}
	return ca.UnrevokeResult{Lifted: true, Version: 43}, nil
}

// TestUnrevokeRoundTrip: Client.Unrevoke reaches POST /v1/revocations/lift with the key and
// the reason, and its answer (or the policy's refusal) arrives typed.
func TestUnrevokeRoundTrip(t *testing.T) {
	ctx := context.Background()
	a, c := newAPI(t)
	key := a.caKey.PublicKey()
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	got, err := c.Unrevoke(ctx, "tok", client.UnrevokeRequest{PublicKey: line, Reason: "found"})
	if err != nil {
		t.Fatal(err)
	}
	diff(t, "answer", client.UnrevokeResponse{Lifted: true, Version: "43"}, got)
	diff(t, "call", "unrevoke "+ssh.FingerprintSHA256(key)+" found", a.keyCall)
	if a.token != "tok" {
		t.Errorf("token %q", a.token)
	}
	a.err = ca.Denied("policy denied the request", "admins only")
	_, err = c.Unrevoke(ctx, "tok", client.UnrevokeRequest{PublicKey: line, Reason: "found"})
	var e *client.Error
	if !errors.As(err, &e) || e.Status != http.StatusForbidden {
		t.Errorf("denied unrevoke: %v; want a 403", err)
	}
}
