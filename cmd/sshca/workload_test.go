package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/sshca/sshca/identity"
	"github.com/sshca/sshca/internal/testenv"
)

// TestWorkloadIdentities: CI platforms' token shapes (GitHub Actions, GitLab CI id_tokens)
// from local issuers reach the policy as workload identities with their full claims, so only
// main of the right repository (by immutable ID) gets host certificates for production names.
func TestWorkloadIdentities(t *testing.T) {
	r := testenv.StartRedis(t)
	gh := startIssuer(t, "sshca-prod")
	gl := startIssuer(t, "sshca-prod")
	base := startServe(t, serveConfig(t, r.Addr,
		identity.IssuerConfig{IssuerURL: gh.URL(), Audiences: []string{"sshca-prod"}, Workload: true},
		identity.IssuerConfig{IssuerURL: gl.URL(), Audiences: []string{"sshca-prod"}, Workload: true},
	))
	hostKey := keygen(t, t.TempDir(), "host")
	pub := readFile(t, hostKey+".pub")
	github := func(ref, repoID string) map[string]any {
		return map[string]any{"sub": "repo:org/infra:ref:" + ref, "repository": "org/infra", "repository_id": repoID,
			"repository_owner": "org", "repository_owner_id": "777", "ref": ref, "workflow": "deploy",
			"job_workflow_ref": "org/infra/.github/workflows/deploy.yml@" + ref, "environment": "prod", "runner_environment": "github-hosted"}
	}
	gitlab := func(ref, refType string) map[string]any {
		return map[string]any{"sub": "project_path:org/app:ref_type:" + refType + ":ref:" + ref, "project_path": "org/app", "project_id": "4242",
			"namespace_path": "org", "ref": ref, "ref_type": refType, "pipeline_source": "push"}
	}
	for _, tt := range []struct {
		name   string
		token  func() (string, error)
		host   string
		status int
	}{
		{"github main", func() (string, error) { return gh.Mint(github("refs/heads/main", "123456789")) }, "db1.prod.internal", 200},
		{"github feature branch", func() (string, error) { return gh.Mint(github("refs/heads/feature", "123456789")) }, "db1.prod.internal", 403},
		{"github re-registered name", func() (string, error) { return gh.Mint(github("refs/heads/main", "999")) }, "db1.prod.internal", 403},
		{"github outside its names", func() (string, error) { return gh.Mint(github("refs/heads/main", "123456789")) }, "db1.staging.internal", 403},
		{"gitlab main branch", func() (string, error) { return gl.Mint(gitlab("main", "branch")) }, "web.staging.internal", 200},
		{"gitlab tag", func() (string, error) { return gl.Mint(gitlab("main", "tag")) }, "web.staging.internal", 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := tt.token()
			if err != nil {
				t.Fatal(err)
			}
			code, out := call(t, http.MethodPost, base+"/v1/certs/host", tok, map[string]any{"public_key": pub, "hostnames": []string{tt.host}})
			if code != tt.status {
				t.Fatalf("status %d %s, want %d", code, out, tt.status)
			}
			if code == 403 && !strings.Contains(string(out), "is not granted") {
				t.Errorf("403 without a reason naming the host: %s", out)
			}
		})
	}
	// The same platform token presented to an installation with another audience is refused.
	tok, _ := gh.Mint(map[string]any{"sub": "repo:org/infra:ref:refs/heads/main", "aud": "https://github.com/org"})
	if code, _ := call(t, http.MethodPost, base+"/v1/certs/host", tok, map[string]any{"public_key": pub, "hostnames": []string{"db1.prod.internal"}}); code != 401 {
		t.Errorf("token for another audience: %d, want 401", code)
	}
}
