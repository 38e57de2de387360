package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
)

// TestBuildVersion: the build information wins where it knows (a module version, a VCS
// stamp); otherwise the -ldflags values; otherwise devel/unknown. No case depends on the build
// information of this test binary, which has no vcs.revision on this machine.
func TestBuildVersion(t *testing.T) {
	info := func(ver string, settings ...string) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/sshca/sshca/cmd/sshca", Version: ver}}
			for i := 0; i+1 < len(settings); i += 2 {
				bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
			}
			return bi, true
		}
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	for _, tt := range []struct {
		name            string
		ldVer, ldCommit string
		read            func() (*debug.BuildInfo, bool)
		want            string
	}{
		{"nothing known", "", "", info("(devel)"), "devel (commit unknown) go1.26.0"},
		{"no build info", "", "", none, "devel (commit unknown) unknown"},
		{"ldflags only", "v1.4.0", "0123abc", info("(devel)"), "v1.4.0 (commit 0123abc) go1.26.0"},
		{"ldflags, no build info", "v1.4.0", "0123abc", none, "v1.4.0 (commit 0123abc) unknown"},
		{"go install module@version", "", "", info("v1.5.0"), "v1.5.0 (commit unknown) go1.26.0"},
		{"vcs stamp beats ldflags commit", "v1.4.0", "0123abc", info("(devel)", "vcs.revision", "fedcba9", "vcs.modified", "false"), "v1.4.0 (commit fedcba9) go1.26.0"},
		{"modified tree", "", "", info("(devel)", "vcs.revision", "fedcba9", "vcs.modified", "true"), "devel (commit fedcba9, modified) go1.26.0"},
		{"empty vcs.revision keeps ldflags", "", "0123abc", info("", "vcs.revision", ""), "devel (commit 0123abc) go1.26.0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			oldV, oldC := version, commit
			version, commit = tt.ldVer, tt.ldCommit
			t.Cleanup(func() { version, commit = oldV, oldC })
			if got := versionLine(tt.read); got != tt.want {
				t.Errorf("versionLine = %q, want %q", got, tt.want)
			}
			var b bytes.Buffer
			if err := printVersion(&b, tt.read); err != nil || b.String() != "sshca "+tt.want+"\n" {
				t.Errorf("printVersion = %q, %v", b.String(), err)
			}
		})
	}
}

// TestVersionCommand builds the binary as the Taskfile and the Dockerfiles do (-ldflags -X,
// -buildvcs=false) and runs `sshca --version` and `sshca version`: both print the values set.
func TestVersionCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "sshca")
	build := exec.Command("go", "build", "-buildvcs=false", "-ldflags", "-X main.version=v9.8.7-test -X main.commit=c0ffee1", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("sshca %v: %v\n%s", args, err, out)
		}
		if !strings.HasPrefix(string(out), "sshca v9.8.7-test (commit c0ffee1) go") || strings.Count(string(out), "\n") != 1 {
			t.Errorf("sshca %v = %q, want the -ldflags values on one line", args, out)
		}
	}
}

// TestLdflagsNameTheVariables: the Taskfile and both Dockerfiles set exactly the variables
// that TestVersionCommand shows to work (-X with a name that does not exist is silently
// ignored by the linker).
func TestLdflagsNameTheVariables(t *testing.T) {
	x := regexp.MustCompile(`-X main\.([A-Za-z_]+)=`)
	for _, f := range []string{"../../Taskfile.yml", "../../deploy/docker/Dockerfile", "../../deploy/docker/Dockerfile.pkcs11"} {
		var names []string
		for _, m := range x.FindAllStringSubmatch(readFile(t, f), -1) {
			names = append(names, m[1])
		}
		if strings.Join(names, ",") != "version,commit" {
			t.Errorf("%s sets -X main.%v, want version and commit", f, names)
		}
	}
}
