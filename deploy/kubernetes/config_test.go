package kubernetes

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
)

// The embedded configuration is checked against the configuration struct of `sshca serve` as
// its source declares it (cmd/sshca/config.go and the types it names), read with go/parser:
// this module cannot import package main, and a hand-kept copy of the keys would drift.
// The service's own checks run too: checkcli_test.go runs the configuration through
// `sshca serve --check-config --offline` (which looks at no file that exists only in the pod).
// The checks below add what only the manifests can tell: that every file the configuration
// names is mounted, from a Secret, and that the ports agree.

const (
	mainModule = "github.com/sshca/sshca"
	repoRoot   = "../.."
)

// schema is what the YAML decoder accepts at one place of the configuration.
type schema struct {
	fields map[string]*schema // a struct: its yaml keys
	elem   *schema            // a slice or map: its elements
	isMap  bool
	scalar string // "string", "bool", "int", "float", "duration", or "any" (not checked)
}

var (
	configSchemaOnce sync.Once
	configSchema     *schema
	configSchemaErr  error
)

func loadConfigSchema(t *testing.T) *schema {
	t.Helper()
	configSchemaOnce.Do(func() {
		l := &schemaLoader{pkgs: map[string]*srcPackage{}}
		configSchema, configSchemaErr = l.named(filepath.Join(repoRoot, "cmd/sshca"), "Config")
	})
	if configSchemaErr != nil {
		t.Fatalf("reading the configuration struct from cmd/sshca: %v", configSchemaErr)
	}
	return configSchema
}

type srcPackage struct {
	types   map[string]*ast.TypeSpec
	imports map[string]map[string]string // type name -> its file's imports (name -> path)
	custom  map[string]bool              // types that decode themselves (UnmarshalYAML/Text)
}

type schemaLoader struct {
	pkgs map[string]*srcPackage
}

func (l *schemaLoader) load(dir string) (*srcPackage, error) {
	if p, ok := l.pkgs[dir]; ok {
		return p, nil
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	p := &srcPackage{types: map[string]*ast.TypeSpec{}, imports: map[string]map[string]string{}, custom: map[string]bool{}}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		imports := map[string]string{}
		for _, im := range file.Imports {
			ip, _ := strconv.Unquote(im.Path.Value)
			name := path.Base(ip)
			if im.Name != nil {
				name = im.Name.Name
			} else if strings.HasPrefix(name, "v") && strings.Count(ip, "/") > 0 {
				if _, err := strconv.Atoi(name[1:]); err == nil { // .../v9
					name = path.Base(path.Dir(ip))
				}
			}
			imports[name] = ip
		}
		for _, d := range file.Decls {
			switch d := d.(type) {
			case *ast.GenDecl:
				for _, s := range d.Specs {
					if ts, ok := s.(*ast.TypeSpec); ok {
						p.types[ts.Name.Name] = ts
						p.imports[ts.Name.Name] = imports
					}
				}
			case *ast.FuncDecl:
				if d.Recv != nil && len(d.Recv.List) == 1 && (d.Name.Name == "UnmarshalYAML" || d.Name.Name == "UnmarshalText") {
					recv := d.Recv.List[0].Type
					if s, ok := recv.(*ast.StarExpr); ok {
						recv = s.X
					}
					if id, ok := recv.(*ast.Ident); ok {
						p.custom[id.Name] = true
					}
				}
			}
		}
	}
	if len(p.types) == 0 {
		return nil, fmt.Errorf("%s: no Go types", dir)
	}
	l.pkgs[dir] = p
	return p, nil
}

func (l *schemaLoader) named(dir, name string) (*schema, error) {
	p, err := l.load(dir)
	if err != nil {
		return nil, err
	}
	ts, ok := p.types[name]
	if !ok {
		return nil, fmt.Errorf("%s: no type %s", dir, name)
	}
	if p.custom[name] {
		return &schema{scalar: "any"}, nil
	}
	return l.expr(dir, p.imports[name], ts.Type)
}

func (l *schemaLoader) expr(dir string, imports map[string]string, e ast.Expr) (*schema, error) {
	switch e := e.(type) {
	case *ast.StarExpr:
		return l.expr(dir, imports, e.X)
	case *ast.ArrayType:
		if id, ok := e.Elt.(*ast.Ident); ok && id.Name == "byte" {
			return &schema{scalar: "string"}, nil
		}
		el, err := l.expr(dir, imports, e.Elt)
		return &schema{elem: el}, err
	case *ast.MapType:
		el, err := l.expr(dir, imports, e.Value)
		return &schema{elem: el, isMap: true}, err
	case *ast.InterfaceType:
		return &schema{scalar: "any"}, nil
	case *ast.Ident:
		switch e.Name {
		case "string":
			return &schema{scalar: "string"}, nil
		case "bool":
			return &schema{scalar: "bool"}, nil
		case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
			return &schema{scalar: "int"}, nil
		case "float32", "float64":
			return &schema{scalar: "float"}, nil
		case "any":
			return &schema{scalar: "any"}, nil
		}
		return l.named(dir, e.Name)
	case *ast.SelectorExpr:
		pkg, ok := e.X.(*ast.Ident)
		if !ok {
			return nil, fmt.Errorf("%s: unexpected type expression", dir)
		}
		ip := imports[pkg.Name]
		switch {
		case ip == "time" && e.Sel.Name == "Duration":
			return &schema{scalar: "duration"}, nil
		case strings.HasPrefix(ip, mainModule+"/"):
			return l.named(filepath.Join(repoRoot, strings.TrimPrefix(ip, mainModule+"/")), e.Sel.Name)
		}
		return &schema{scalar: "any"}, nil // another module's type: not followed
	case *ast.StructType:
		s := &schema{fields: map[string]*schema{}}
		for _, f := range e.Fields.List {
			var tag string
			if f.Tag != nil {
				raw, _ := strconv.Unquote(f.Tag.Value)
				tag = reflect.StructTag(raw).Get("yaml")
			}
			key, opts, _ := strings.Cut(tag, ",")
			if key == "-" {
				continue
			}
			fs, err := l.expr(dir, imports, f.Type)
			if err != nil {
				return nil, err
			}
			if len(f.Names) == 0 || slices.Contains(strings.Split(opts, ","), "inline") {
				for k, v := range fs.fields {
					s.fields[k] = v
				}
				continue
			}
			for _, n := range f.Names {
				if !n.IsExported() {
					continue
				}
				k := key
				if k == "" {
					k = strings.ToLower(n.Name) // yaml.v3's default
				}
				s.fields[k] = fs
			}
		}
		return s, nil
	}
	return nil, fmt.Errorf("%s: unsupported type expression %T", dir, e)
}

// check reports every place of n that the decoder (KnownFields) would refuse or misread.
func (s *schema) check(at string, n *yaml.Node, errs *[]string) {
	bad := func(format string, args ...any) { *errs = append(*errs, at+": "+fmt.Sprintf(format, args...)) }
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	switch {
	case s.scalar == "any":
	case s.fields != nil:
		if n.Kind != yaml.MappingNode {
			bad("want a mapping")
			return
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i].Value
			if seen[k] {
				bad("%s given twice", k)
			}
			seen[k] = true
			fs, ok := s.fields[k]
			if !ok {
				bad("unknown key %q (sshca refuses unknown keys)", k)
				continue
			}
			fs.check(strings.TrimPrefix(at+"."+k, "."), n.Content[i+1], errs)
		}
	case s.isMap:
		if n.Kind != yaml.MappingNode {
			bad("want a mapping")
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			s.elem.check(at+"."+n.Content[i].Value, n.Content[i+1], errs)
		}
	case s.elem != nil:
		if n.Kind != yaml.SequenceNode {
			bad("want a list")
			return
		}
		for i, c := range n.Content {
			s.elem.check(fmt.Sprintf("%s[%d]", at, i), c, errs)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			bad("want a %s", s.scalar)
			return
		}
		var err error
		switch s.scalar {
		case "bool":
			if n.Tag != "!!bool" {
				err = fmt.Errorf("%q is not a boolean", n.Value)
			}
		case "int":
			_, err = strconv.ParseInt(n.Value, 0, 64)
		case "float":
			_, err = strconv.ParseFloat(n.Value, 64)
		case "duration":
			_, err = time.ParseDuration(n.Value)
		}
		if err != nil {
			bad("%v", err)
		}
	}
}

// lookup returns the node at a dotted path of a mapping, or nil.
func lookup(n *yaml.Node, keys ...string) *yaml.Node {
	for _, k := range keys {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				next = n.Content[i+1]
			}
		}
		n = next
	}
	return n
}

func str(n *yaml.Node, keys ...string) string {
	if v := lookup(n, keys...); v != nil && v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
		return v.Value
	}
	return ""
}

// deployedConfig is what the manifests' other checks need to know of the configuration.
type deployedConfig struct {
	listenPort int32
	tls        bool
	// diagPort is diag_listen's port; diagAllInterfaces says it listens beyond loopback.
	diagPort          int32
	diagAllInterfaces bool
}

// checkConfig finds the configuration the container is started with, in the rendered
// ConfigMap, and checks it.
func checkConfig(t *testing.T, cm *corev1.ConfigMap, pod *corev1.PodSpec, c *corev1.Container) deployedConfig {
	t.Helper()
	volumes := pod.Volumes
	args := append(slices.Clone(c.Command), c.Args...)
	var file string
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			file = args[i+1]
		} else if v, ok := strings.CutPrefix(a, "--config="); ok {
			file = v
		}
	}
	if len(args) == 0 || args[0] != "serve" || file == "" {
		t.Fatalf("container %s: args %q; want serve --config FILE", c.Name, args)
	}
	m, v, err := mountFor(c, volumes, file)
	if err != nil {
		t.Fatal(err)
	}
	if v.ConfigMap == nil || v.ConfigMap.Name != cm.Name {
		t.Fatalf("--config %s is not on the ConfigMap %s", file, cm.Name)
	}
	text, ok := cm.Data[strings.TrimPrefix(file, path.Clean(m.MountPath)+"/")]
	if !ok {
		t.Fatalf("ConfigMap %s has no key for %s (keys: %v)", cm.Name, file, keysOf(cm.Data))
	}

	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatalf("config: %v", err)
	}
	if len(doc.Content) != 1 {
		t.Fatal("config: want one YAML document")
	}
	root := doc.Content[0]
	var errs []string
	loadConfigSchema(t).check("", root, &errs)
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }

	// What Config.Validate checks without touching files.
	var out deployedConfig
	host, port, err := net.SplitHostPort(str(root, "listen"))
	if p, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || p == 0 {
		bad("listen: %q is not a host:port address", str(root, "listen"))
	} else {
		out.listenPort = int32(p)
	}
	if dh, dp, err := net.SplitHostPort(str(root, "diag_listen")); err != nil {
		bad("diag_listen: %q is not a host:port address (the probes and Prometheus read it)", str(root, "diag_listen"))
	} else if p, err := strconv.ParseUint(dp, 10, 16); err == nil {
		out.diagPort, out.diagAllInterfaces = int32(p), dh == "0.0.0.0" || dh == "::" || dh == ""
	}
	certFile, keyFile := str(root, "tls", "cert_file"), str(root, "tls", "key_file")
	if (certFile == "") != (keyFile == "") {
		bad("tls: cert_file and key_file must be given together")
	}
	out.tls = certFile != ""
	if !out.tls && str(root, "behind_tls_proxy") != "true" && host != "127.0.0.1" && host != "localhost" && host != "::1" {
		bad("listen: bearer tokens would travel over plain HTTP; configure tls or behind_tls_proxy")
	}
	for _, k := range []string{"user_ca", "host_ca"} {
		if str(root, k, "kms") == "" || str(root, k, "key") == "" {
			bad("%s: kms and key are required", k)
		}
	}
	if str(root, "user_ca", "key") == str(root, "host_ca", "key") {
		bad("user_ca and host_ca must be different keys")
	}
	addrs := lookup(root, "redis", "addrs")
	if addrs == nil || len(addrs.Content) == 0 {
		bad("redis.addrs: at least one address is required")
	} else {
		for i, a := range addrs.Content {
			if _, _, err := net.SplitHostPort(a.Value); err != nil || strings.ContainsAny(a.Value, "@/") {
				bad("redis.addrs[%d]: not a host:port address", i)
			}
		}
	}
	issuers := lookup(root, "oidc", "issuers")
	if issuers == nil || len(issuers.Content) == 0 {
		bad("oidc.issuers: at least one issuer")
	} else {
		for i, is := range issuers.Content {
			if u := str(is, "issuer_url"); !strings.HasPrefix(u, "https://") {
				bad("oidc.issuers[%d].issuer_url: %q is not an https URL", i, u)
			}
			if a := lookup(is, "audiences"); a == nil || len(a.Content) == 0 {
				bad("oidc.issuers[%d].audiences: required", i)
			}
		}
	}
	if lookup(root, "login") != nil && (str(root, "login", "issuer_url") == "" || str(root, "login", "client_id") == "") {
		bad("login: issuer_url and client_id are required")
	}

	// What only the manifests can tell.
	for _, k := range [][]string{{"redis", "password"}, {"redis", "sentinel_password"}} {
		if str(root, k...) != "" {
			bad("%s: a password in the ConfigMap; use a file from a Secret", strings.Join(k, "."))
		}
	}
	if str(root, "audit", "key_file") == "" {
		bad("audit.key_file: required here (without it anyone who can write to Redis can rewrite the audit chain)")
	}
	image := c.Image
	static := !strings.Contains(image, "pkcs11")
	if str(root, "keyring", "enabled") == "true" && strings.HasPrefix(str(root, "keyring", "kms"), "softkms:") {
		bad("keyring: softkms keys in a pod's key_dir are neither shared by the replicas nor kept; use an HSM")
	}
	secretFiles := map[string]string{ // what the file holds -> its path
		"tls.cert_file":         certFile,
		"tls.key_file":          keyFile,
		"redis.password_file":   str(root, "redis", "password_file"),
		"redis.ca_file":         str(root, "redis", "ca_file"),
		"audit.key_file":        str(root, "audit", "key_file"),
		"policy.data_file":      str(root, "policy", "data_file"),
		"policy.dir":            str(root, "policy", "dir"),
		"keyring.key_dir":       str(root, "keyring", "key_dir"),
		"user_ca.key (softkms)": uriParam(str(root, "user_ca", "key"), "path"),
		"host_ca.key (softkms)": uriParam(str(root, "host_ca", "key"), "path"),
		"user_ca.kms pin":       uriParam(str(root, "user_ca", "kms"), "pin-source"),
		"host_ca.kms pin":       uriParam(str(root, "host_ca", "kms"), "pin-source"),
	}
	for _, k := range []string{"user_ca", "host_ca"} {
		if kms := str(root, k, "kms"); static && strings.HasPrefix(kms, "pkcs11:") {
			bad("%s.kms: PKCS#11 needs the image of Dockerfile.pkcs11 (cgo), not %s", k, image)
		}
		if strings.Contains(str(root, k, "kms"), "pin-value=") {
			bad("%s.kms: a PIN in the ConfigMap; use pin-source= with a file from a Secret", k)
		}
	}
	for what, file := range secretFiles {
		if file == "" {
			continue
		}
		_, v, err := mountFor(c, volumes, file)
		switch {
		case err != nil:
			bad("%s: %v", what, err)
		case strings.HasPrefix(what, "policy."):
			// Policy is configuration, not a secret: a ConfigMap is fine.
		case v.ConfigMap != nil:
			bad("%s %s is in a ConfigMap; secrets go in a Secret", what, file)
		case v.EmptyDir != nil && !filledFromSecret(v.Name, pod):
			bad("%s %s is on the emptyDir %s that no init container fills from a Secret", what, file, v.Name)
		}
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		t.Errorf("the embedded sshca config has problems:\n  %s", strings.Join(errs, "\n  "))
	}
	return out
}

// filledFromSecret reports whether an init container of the pod writes the emptyDir volume
// while reading a Secret volume.
func filledFromSecret(volume string, pod *corev1.PodSpec) bool {
	secret := map[string]bool{}
	for _, v := range pod.Volumes {
		secret[v.Name] = v.Secret != nil
	}
	for _, ic := range pod.InitContainers {
		var writes, reads bool
		for _, m := range ic.VolumeMounts {
			writes = writes || m.Name == volume && !m.ReadOnly
			reads = reads || secret[m.Name]
		}
		if writes && reads {
			return true
		}
	}
	return false
}

// uriParam returns a parameter of a KMS URI ("softkms:path=/x", "pkcs11:...;token=t?pin-source=/p").
func uriParam(uri, name string) string {
	_, rest, ok := strings.Cut(uri, ":")
	if !ok {
		return ""
	}
	for _, part := range strings.FieldsFunc(rest, func(r rune) bool { return r == ';' || r == '?' || r == '&' }) {
		if v, ok := strings.CutPrefix(part, name+"="); ok {
			return v
		}
	}
	return ""
}

func keysOf(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
