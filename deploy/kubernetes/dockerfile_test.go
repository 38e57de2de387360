package kubernetes

import (
	"bufio"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	dfparser "github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// The images cannot be built here (no registry to pull the base images from), so the
// Dockerfiles are checked as BuildKit parses them.

type dockerStage struct {
	name, base string
	instrs     []*dfparser.Node
}

func parseDockerfile(t *testing.T, file string) (stages []dockerStage, text string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	res, err := dfparser.Parse(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	for _, w := range res.Warnings {
		t.Errorf("%s: %s", file, w.Short)
	}
	for _, n := range res.AST.Children {
		cmd := strings.ToLower(n.Value)
		if cmd == "from" {
			words := nodeWords(n)
			s := dockerStage{base: words[0]}
			if len(words) == 3 && strings.EqualFold(words[1], "as") {
				s.name = words[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if cmd != "arg" {
				t.Errorf("%s:%d: %s before the first FROM", file, n.StartLine, n.Value)
			}
			continue
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, n)
	}
	return stages, string(b)
}

func nodeWords(n *dfparser.Node) []string {
	var ws []string
	for x := n.Next; x != nil; x = x.Next {
		ws = append(ws, x.Value)
	}
	return ws
}

// envOf returns the variables an ENV instruction sets (its nodes come in key, value, separator triples).
func envOf(n *dfparser.Node) map[string]string {
	env := map[string]string{}
	for x := n.Next; x != nil && x.Next != nil; {
		env[x.Value] = strings.Trim(x.Next.Value, `"'`)
		x = x.Next.Next
		if x != nil && (x.Value == "=" || x.Value == "" || x.Value == " ") {
			x = x.Next
		}
	}
	return env
}

// keyMaterial matches paths that hold keys, PINs, passwords or a local state directory.
var keyMaterial = regexp.MustCompile(`(?i)(\.(pem|key|crt|p12|pfx|krl)$|(^|/)\.?state(/|$)|(^|[/.-])pin$|(^|/)id_[a-z0-9]+|secret|password|\.env$)`)

// secretName matches build argument and variable names that would carry a secret into the image.
var secretName = regexp.MustCompile(`(?i)(pass|pin|token|secret|key)`)

func TestDockerfiles(t *testing.T) {
	goMinor := goMinorVersion(t)
	checkVersionVars(t)
	for _, tc := range []struct {
		file   string
		static bool
	}{
		{"../docker/Dockerfile", true},
		{"../docker/Dockerfile.pkcs11", false},
	} {
		t.Run(filepath.Base(tc.file), func(t *testing.T) {
			stages, text := parseDockerfile(t, tc.file)
			if len(stages) < 2 {
				t.Fatalf("%d stages; want a build stage and a runtime stage", len(stages))
			}
			checkDockerfile(t, stages)
			final := stages[len(stages)-1]
			build := buildStage(t, stages)

			// The Go toolchain is the one go.mod asks for.
			if !strings.Contains(text, "ARG GO_VERSION="+goMinor+"\n") || !strings.HasPrefix(build.base, "golang:${GO_VERSION}") {
				t.Errorf("build stage %s: want golang:${GO_VERSION}-... with ARG GO_VERSION=%s (go.mod's go line)", build.base, goMinor)
			}

			cgo := cgoSetting(build)
			if tc.static {
				if cgo != "0" {
					t.Errorf("CGO_ENABLED=%q in the build stage; the static image needs CGO_ENABLED=0", cgo)
				}
				if !strings.HasPrefix(final.base, "gcr.io/distroless/static") && final.base != "scratch" {
					t.Errorf("runtime base %s: want a minimal static base", final.base)
				}
				return
			}
			if cgo != "1" {
				t.Errorf("CGO_ENABLED=%q in the build stage; PKCS#11 needs cgo (say CGO_ENABLED=1)", cgo)
			}
			if strings.Contains(text, "CGO_ENABLED=0") {
				t.Error("CGO_ENABLED=0 in the PKCS#11 image")
			}
			if !regexp.MustCompile(`^(debian|ubuntu|gcr\.io/distroless/(base|cc))`).MatchString(final.base) {
				t.Errorf("runtime base %s: PKCS#11 modules need glibc and dlopen", final.base)
			}
			installsHSM := false
			for _, n := range final.instrs {
				if strings.EqualFold(n.Value, "run") && strings.Contains(n.Original, "libsofthsm2") {
					installsHSM = true
				}
			}
			if !installsHSM {
				t.Error("the PKCS#11 image installs no PKCS#11 module (libsofthsm2)")
			}
			for _, modulePath := range []string{"/usr/lib/softhsm/libsofthsm2.so", "p11-kit-proxy.so"} {
				if !strings.Contains(text, modulePath) {
					t.Errorf("the module path %s is not documented", modulePath)
				}
			}
		})
	}
}

// checkDockerfile checks what both Dockerfiles must hold: stage references, the final
// non-root USER, no HEALTHCHECK, nothing secret copied or set, version and commit passed in.
func checkDockerfile(t *testing.T, stages []dockerStage) {
	t.Helper()
	names := map[string]bool{}
	for _, s := range stages {
		for _, n := range s.instrs {
			at := "line " + strconv.Itoa(n.StartLine)
			switch strings.ToLower(n.Value) {
			case "healthcheck":
				t.Errorf("%s: HEALTHCHECK (Kubernetes probes /healthz and /readyz)", at)
			case "add":
				t.Errorf("%s: ADD fetches URLs and unpacks archives; use COPY", at)
			case "copy":
				words := nodeWords(n)
				from := ""
				for _, f := range n.Flags {
					if v, ok := strings.CutPrefix(f, "--from="); ok {
						from = v
					}
				}
				if from != "" && !names[from] {
					t.Errorf("%s: COPY --from=%s names no earlier stage", at, from)
				}
				for _, src := range words[:len(words)-1] {
					if keyMaterial.MatchString(src) {
						t.Errorf("%s: COPY %s copies key material into the image", at, src)
					}
				}
			case "env", "arg":
				for _, w := range nodeWords(n) {
					name, _, _ := strings.Cut(w, "=")
					if secretName.MatchString(name) {
						t.Errorf("%s: %s %s would carry a secret in the image's history", at, n.Value, name)
					}
				}
			}
		}
		if s.name != "" {
			names[s.name] = true
		}
	}

	final := stages[len(stages)-1]
	user := ""
	var copied []string
	for _, n := range final.instrs {
		switch strings.ToLower(n.Value) {
		case "user":
			user = nodeWords(n)[0]
		case "copy":
			words := nodeWords(n)
			copied = append(copied, words[len(words)-1])
		case "entrypoint":
			words := nodeWords(n)
			if len(words) == 0 || !slices.Contains(copied, words[0]) {
				t.Errorf("ENTRYPOINT %v is not the binary copied into the final stage (%v)", words, copied)
			}
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); user == "" || err != nil && uid != "nonroot" || err == nil && n == 0 {
		t.Errorf("final USER %q: want a non-root user, numeric so that runAsNonRoot can verify it", user)
	} else if err != nil {
		t.Logf("final USER %q is not numeric: Kubernetes' runAsNonRoot cannot verify it without runAsUser", user)
	}

	build := buildStage(t, stages)
	args := map[string]bool{}
	for _, n := range build.instrs {
		switch strings.ToLower(n.Value) {
		case "arg":
			for _, w := range nodeWords(n) {
				name, _, _ := strings.Cut(w, "=")
				args[name] = true
			}
		case "run":
			if !strings.Contains(n.Original, "go build") {
				continue
			}
			for _, v := range []string{"VERSION", "COMMIT"} {
				flag := "-X main." + strings.ToLower(v) + "=${" + v + "}"
				if !strings.Contains(n.Original, flag) {
					t.Errorf("go build without %s", flag)
				}
				if !args[v] {
					t.Errorf("go build uses ${%s} before ARG %s in its stage", v, v)
				}
			}
		}
	}
}

// buildStage is the stage that runs go build.
func buildStage(t *testing.T, stages []dockerStage) dockerStage {
	t.Helper()
	for _, s := range stages {
		for _, n := range s.instrs {
			if strings.EqualFold(n.Value, "run") && strings.Contains(n.Original, "go build") {
				return s
			}
		}
	}
	t.Fatal("no stage runs go build")
	return dockerStage{}
}

// cgoSetting is CGO_ENABLED where the stage's go build runs: from ENV, or set on the command.
func cgoSetting(s dockerStage) string {
	v := ""
	for _, n := range s.instrs {
		switch strings.ToLower(n.Value) {
		case "env":
			if x, ok := envOf(n)["CGO_ENABLED"]; ok {
				v = x
			}
		case "run":
			if m := regexp.MustCompile(`CGO_ENABLED=(\d)\s+go build`).FindStringSubmatch(n.Original); m != nil {
				return m[1]
			}
			if strings.Contains(n.Original, "go build") {
				return v
			}
		}
	}
	return v
}

// goMinorVersion is the main module's go line as major.minor ("1.26").
func goMinorVersion(t *testing.T) string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go "); ok {
			parts := strings.SplitN(v, ".", 3)
			return parts[0] + "." + parts[1]
		}
	}
	t.Fatal("go.mod has no go line")
	return ""
}

// checkVersionVars: -ldflags -X silently does nothing when the variable does not exist.
func checkVersionVars(t *testing.T) {
	t.Helper()
	fset := token.NewFileSet()
	files, _ := filepath.Glob(filepath.Join(repoRoot, "cmd/sshca/*.go"))
	found := map[string]bool{}
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.VAR {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "string" || vs.Type == nil && len(vs.Values) > 0 {
					for _, n := range vs.Names {
						found[n.Name] = true
					}
				}
			}
		}
	}
	for _, v := range []string{"version", "commit"} {
		if !found[v] {
			t.Errorf("cmd/sshca has no package-level string variable %s for -X main.%s", v, v)
		}
	}
}

// TestDockerignore: COPY . . brings the build context in, so .dockerignore is what keeps key
// material and local state out of the image, and must not drop anything the build needs.
func TestDockerignore(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	excluded := func(p string) bool {
		ok, err := pm.MatchesOrParentMatches(p)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	for _, p := range []string{
		".git/config", ".state/user_ca.pem", ".state/keys/host_ca_1.pem", ".state/anything", "user_ca.pem",
		"deploy/host_ca.pem", "tls.key", "deploy/tls.crt",
		"cmd/sshca/testdata/ca.pem", "etc/hsm-pin", "audit.key", "sshca", "identity.test",
		"deploy/kubernetes/go.mod", "dump.rdb", "id_ed25519",
	} {
		if !excluded(p) {
			t.Errorf("%s enters the build context", p)
		}
	}

	// Every file go build needs is kept: Go sources, go.mod and go.sum, and embedded files.
	var needed []string
	err = filepath.WalkDir(repoRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == ".git" {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil && rel != "." {
				return filepath.SkipDir // another module (this one)
			}
			return nil
		}
		name := d.Name()
		switch {
		case name == "go.mod" || name == "go.sum":
			needed = append(needed, rel)
		case strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go"):
			needed = append(needed, rel)
			embeds, err := embeddedFiles(p)
			if err != nil {
				return err
			}
			for _, e := range embeds {
				r, _ := filepath.Rel(repoRoot, e)
				needed = append(needed, filepath.ToSlash(r))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(needed) < 10 {
		t.Fatalf("found only %d source files under %s", len(needed), repoRoot)
	}
	for _, p := range needed {
		if excluded(p) {
			t.Errorf(".dockerignore drops %s, which the build needs", p)
		}
	}
}

// embeddedFiles lists the files a Go source file's //go:embed lines name.
func embeddedFiles(file string) ([]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		pats, ok := strings.CutPrefix(strings.TrimSpace(line), "//go:embed ")
		if !ok {
			continue
		}
		for _, pat := range strings.Fields(pats) {
			pat = strings.TrimPrefix(strings.Trim(pat, "\"`"), "all:")
			m, err := filepath.Glob(filepath.Join(filepath.Dir(file), pat))
			if err != nil {
				return nil, err
			}
			out = append(out, m...)
		}
	}
	return out, nil
}
