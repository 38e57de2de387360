package main

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra/doc"
)

var updateDocs = flag.Bool("update-docs", false, "rewrite docs/cli, docs/man and docs/configuration.md (go tool task docs)")

// docsDir is the repository's docs directory, seen from cmd/sshca.
const docsDir = "../../docs"

// manDate is the date in the man pages' header: fixed, so that regenerating them changes
// nothing unless the command tree did (a clock would make every commit stale).
var manDate = time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)

// TestGeneratedDocs: docs/cli (Markdown), docs/man (man pages, section 1) and
// docs/configuration.md are what the command tree and config.go's documentation produce now.
// `go tool task docs` (go test -run TestGeneratedDocs -update-docs) rewrites them.
func TestGeneratedDocs(t *testing.T) {
	// Flag defaults read from the environment (a server URL, a Redis URL with its password)
	// belong to whoever runs this, not in the docs.
	for _, env := range docsEnv {
		t.Setenv(env, "")
	}
	want, err := generateDocs()
	if err != nil {
		t.Fatal(err)
	}
	if *updateDocs {
		for _, sub := range []string{"cli", "man"} {
			if err := os.RemoveAll(filepath.Join(docsDir, sub)); err != nil {
				t.Fatal(err)
			}
		}
		for name, b := range want {
			p := filepath.Join(docsDir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	var have []string
	for _, sub := range []string{"cli", "man"} {
		entries, _ := os.ReadDir(filepath.Join(docsDir, sub))
		for _, e := range entries {
			have = append(have, sub+"/"+e.Name())
		}
	}
	for _, name := range have {
		if _, ok := want[name]; !ok {
			t.Errorf("docs/%s documents a command that no longer exists: run go tool task docs", name)
		}
	}
	for name, b := range want {
		got, err := os.ReadFile(filepath.Join(docsDir, name))
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("docs/%s is stale (%v): run go tool task docs", name, err)
		}
	}
}

// generateDocs renders every generated file, by path under docs/.
func generateDocs() (map[string][]byte, error) {
	out := map[string][]byte{}
	root := newRootCommand()
	root.DisableAutoGenTag = true // no generation date: the files change only with the commands
	dir, err := os.MkdirTemp("", "sshca-docs")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	for _, sub := range []string{"cli", "man"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, err
		}
	}
	if err := doc.GenMarkdownTree(root, filepath.Join(dir, "cli")); err != nil {
		return nil, err
	}
	header := &doc.GenManHeader{Title: "SSHCA", Section: "1", Date: &manDate, Source: "sshca", Manual: "sshca manual"}
	if err := doc.GenManTree(root, header, filepath.Join(dir, "man")); err != nil {
		return nil, err
	}
	for _, sub := range []string{"cli", "man"} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, sub, e.Name()))
			if err != nil {
				return nil, err
			}
			out[sub+"/"+e.Name()] = sanitizeDefaults(b)
		}
	}
	cfg, err := configReference()
	if err != nil {
		return nil, err
	}
	out["configuration.md"] = cfg
	return out, nil
}

// docsEnv are the environment variables flag defaults are read from.
var docsEnv = []string{"SSHCA_SERVER", "SSHCA_REDIS_URL", "SSHCA_TLS_CA", "SSHCA_TLS_CERT", "SSHCA_TLS_KEY"}

// sanitizeDefaults replaces the home directory of whoever generates the docs with $HOME.
func sanitizeDefaults(b []byte) []byte {
	if home, err := os.UserHomeDir(); err == nil && home != "/" {
		b = bytes.ReplaceAll(b, []byte(home), []byte("$HOME"))
	}
	return b
}

// configReference renders docs/configuration.md from the doc comments of Config and the
// types it contains, read with go/ast from their source (cmd/sshca and the packages of this
// module that it uses), keyed by their YAML names.
func configReference() ([]byte, error) {
	r := &configDocs{fset: token.NewFileSet(), pkgs: map[string]*docPkg{}}
	var b bytes.Buffer
	b.WriteString("<!-- Generated from cmd/sshca/config.go and the types it names by `go tool task docs`; do not edit. -->\n\n")
	b.WriteString("# sshca serve: configuration reference\n\n")
	b.WriteString("`sshca serve --config FILE` reads one YAML file with these keys (unknown keys are errors) and\n")
	b.WriteString("validates it at start, reporting every problem at once; `sshca serve --check-config FILE` does the\n")
	b.WriteString("same without serving. Durations are Go durations (`90s`, `5m`, `12h`). `deploy/config.example.yaml`\n")
	b.WriteString("is a complete example.\n\n")
	if err := r.section(&b, ".", "Config", "", 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

type docPkg struct {
	types   map[string]*ast.TypeSpec
	docs    map[string]string
	imports map[*ast.TypeSpec]map[string]string // file imports: name -> path
}

type configDocs struct {
	fset *token.FileSet
	pkgs map[string]*docPkg // by directory relative to cmd/sshca
}

const modulePath = "github.com/sshca/sshca"

func (r *configDocs) pkg(dir string) (*docPkg, error) {
	if p, ok := r.pkgs[dir]; ok {
		return p, nil
	}
	parsed, err := parser.ParseDir(r.fset, dir, func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, parser.ParseComments)
	if err != nil {
		return nil, err
	}
	p := &docPkg{types: map[string]*ast.TypeSpec{}, docs: map[string]string{}, imports: map[*ast.TypeSpec]map[string]string{}}
	for _, pk := range parsed {
		for _, f := range pk.Files {
			imps := map[string]string{}
			for _, im := range f.Imports {
				path, _ := strconv.Unquote(im.Path.Value)
				name := filepath.Base(path)
				if im.Name != nil {
					name = im.Name.Name
				}
				imps[name] = path
			}
			for _, d := range f.Decls {
				g, ok := d.(*ast.GenDecl)
				if !ok || g.Tok != token.TYPE {
					continue
				}
				for _, s := range g.Specs {
					ts := s.(*ast.TypeSpec)
					p.types[ts.Name.Name] = ts
					p.imports[ts] = imps
					docText := ts.Doc.Text()
					if docText == "" && len(g.Specs) == 1 {
						docText = g.Doc.Text()
					}
					p.docs[ts.Name.Name] = docText
				}
			}
		}
	}
	r.pkgs[dir] = p
	return p, nil
}

// resolve finds the struct behind a type expression used in pkg dir: its directory, name and
// declaration, following aliases; ok is false for anything that is not one of ours.
func (r *configDocs) resolve(dir string, imps map[string]string, e ast.Expr) (string, string, *ast.TypeSpec, bool) {
	switch t := e.(type) {
	case *ast.StarExpr:
		return r.resolve(dir, imps, t.X)
	case *ast.Ident:
		p, err := r.pkg(dir)
		if err != nil {
			return "", "", nil, false
		}
		ts, ok := p.types[t.Name]
		if !ok {
			return "", "", nil, false
		}
		if ts.Assign.IsValid() {
			return r.resolve(dir, p.imports[ts], ts.Type)
		}
		return dir, t.Name, ts, true
	case *ast.SelectorExpr:
		x, ok := t.X.(*ast.Ident)
		if !ok {
			return "", "", nil, false
		}
		path, ok := imps[x.Name]
		if !ok || !strings.HasPrefix(path, modulePath+"/") {
			return "", "", nil, false
		}
		return r.resolve(filepath.Join("../..", strings.TrimPrefix(path, modulePath+"/")), nil, ast.NewIdent(t.Sel.Name))
	}
	return "", "", nil, false
}

// typeName is how the reference shows a field's type.
func typeName(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.StarExpr:
		return typeName(t.X)
	case *ast.ArrayType:
		return "list of " + typeName(t.Elt)
	case *ast.MapType:
		return "map of " + typeName(t.Key) + " to " + typeName(t.Value)
	case *ast.SelectorExpr:
		if x, ok := t.X.(*ast.Ident); ok && x.Name == "time" && t.Sel.Name == "Duration" {
			return "duration"
		}
		return "mapping"
	case *ast.Ident:
		switch t.Name {
		case "string", "bool":
			return t.Name
		case "int", "int64", "uint64", "uint32", "uint":
			return "integer"
		case "float64":
			return "number"
		}
		return "mapping"
	}
	return "value"
}

// section writes the keys of struct name (in dir) under prefix, then a section per nested
// mapping.
func (r *configDocs) section(b *bytes.Buffer, dir, name, prefix string, depth int) error {
	p, err := r.pkg(dir)
	if err != nil {
		return err
	}
	ts := p.types[name]
	st, ok := ts.Type.(*ast.StructType)
	if !ok {
		return fmt.Errorf("%s.%s is not a struct", dir, name)
	}
	title := "Top level"
	if prefix != "" {
		title = "`" + strings.TrimSuffix(prefix, ".") + "`"
	}
	fmt.Fprintf(b, "## %s\n\n", title)
	if d := strings.TrimSpace(p.docs[name]); d != "" && prefix != "" {
		b.WriteString(oneParagraph(d) + "\n\n")
	}
	b.WriteString("| key | type | description |\n|---|---|---|\n")
	type nested struct{ dir, name, prefix string }
	var subs []nested
	var lastDoc, lastText string
	var lastEnd int
	for _, f := range st.Fields.List {
		key, skip := yamlKey(f)
		if skip {
			continue
		}
		d := strings.TrimSpace(f.Doc.Text())
		line := r.fset.Position(f.Pos()).Line
		switch {
		case d != "":
			lastDoc, lastText = key, d
		case lastDoc != "" && line == lastEnd+1 && strings.Contains(lastText, f.Names[0].Name):
			// one comment documents the fields that follow it and that it names
			d = "See `" + prefix + lastDoc + "`."
		default:
			lastDoc = ""
		}
		lastEnd = r.fset.Position(f.End()).Line
		typ := typeName(f.Type)
		elem := f.Type
		if a, ok := elem.(*ast.ArrayType); ok {
			elem = a.Elt
		}
		if sdir, sname, sts, ok := r.resolve(dir, p.imports[ts], elem); ok {
			if _, isStruct := sts.Type.(*ast.StructType); isStruct {
				sub := prefix + key
				if _, list := f.Type.(*ast.ArrayType); list {
					sub += "[]"
				}
				subs = append(subs, nested{sdir, sname, sub + "."})
				if d == "" {
					sp, _ := r.pkg(sdir)
					d, _, _ = strings.Cut(oneParagraph(sp.docs[sname]), ". ")
				}
				typ = strings.Replace(typ, "mapping", "mapping, see [`"+sub+"`](#"+anchor(sub)+")", 1)
			}
		}
		fmt.Fprintf(b, "| `%s%s` | %s | %s |\n", prefix, key, typ, strings.ReplaceAll(oneParagraph(d), "|", `\|`))
	}
	b.WriteString("\n")
	for _, s := range subs {
		if err := r.section(b, s.dir, s.name, s.prefix, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// anchor is the GitHub Markdown anchor of a section titled `key`.
func anchor(key string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '-':
			return r
		}
		return -1
	}, strings.ToLower(key))
}

func oneParagraph(s string) string { return strings.Join(strings.Fields(s), " ") }

// yamlKey is the field's key as yaml.v3 reads it: its tag's name, else the lowercased field
// name; skip for "-" and for unexported fields.
func yamlKey(f *ast.Field) (string, bool) {
	if len(f.Names) == 0 || !f.Names[0].IsExported() {
		return "", true
	}
	name := strings.ToLower(f.Names[0].Name)
	if f.Tag != nil {
		tag, _ := strconv.Unquote(f.Tag.Value)
		if v, ok := reflect.StructTag(tag).Lookup("yaml"); ok {
			n, _, _ := strings.Cut(v, ",")
			if n == "-" {
				return "", true
			}
			if n != "" {
				name = n
			}
		}
	}
	return name, false
}

// TestConfigReferenceCoversConfig: every YAML key that Config decodes (by reflection on the
// real types) appears in the generated reference, so the go/ast walk cannot silently miss a
// field of a type it failed to resolve.
func TestConfigReferenceCoversConfig(t *testing.T) {
	ref, err := configReference()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	var walk func(reflect.Type, string)
	walk = func(typ reflect.Type, prefix string) {
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		for i := range typ.NumField() {
			f := typ.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			keys = append(keys, prefix+name)
			ft := f.Type
			sub := prefix + name
			if ft.Kind() == reflect.Slice {
				ft, sub = ft.Elem(), sub+"[]"
			}
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft.PkgPath() != "time" {
				walk(ft, sub+".")
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	for _, k := range keys {
		if !bytes.Contains(ref, []byte("| `"+k+"` |")) {
			t.Errorf("docs/configuration.md has no row for %s", k)
		}
	}
	if !slices.Contains(keys, "tls.client_ca_file") {
		t.Errorf("the reflection walk found no tls.client_ca_file: %v", keys)
	}
}
