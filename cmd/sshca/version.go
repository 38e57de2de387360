package main

import (
	"fmt"
	"io"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set by the Taskfile and the Dockerfiles with
// -ldflags "-X main.version=$VERSION -X main.commit=$COMMIT": the fallback for builds whose
// build information has no module version or VCS stamp (-buildvcs=false, a tarball, go run).
var (
	version string
	commit  string
)

// buildVersion is the version and commit of this binary. The build information wins where it
// knows better: a module version other than "(devel)" (go install …@v1.2.3) and vcs.revision
// (go build in a git checkout with -buildvcs). Otherwise the -ldflags values, else "devel" and
// "unknown". read is debug.ReadBuildInfo (injected so tests control it).
func buildVersion(read func() (*debug.BuildInfo, bool)) (ver, rev string, modified bool) {
	ver, rev = version, commit
	if bi, ok := read(); ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			ver = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if s.Value != "" {
					rev = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if ver == "" {
		ver = "devel"
	}
	if rev == "" {
		rev = "unknown"
	}
	return ver, rev, modified
}

// versionLine is "VERSION (commit COMMIT[, modified]) GOVERSION", what sshca version and
// sshca --version print after "sshca ".
func versionLine(read func() (*debug.BuildInfo, bool)) string {
	ver, rev, modified := buildVersion(read)
	if modified {
		rev += ", modified"
	}
	goVersion := "unknown"
	if bi, ok := read(); ok && bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	return fmt.Sprintf("%s (commit %s) %s", ver, rev, goVersion)
}

// printVersion writes the version line of sshca version.
func printVersion(w io.Writer, read func() (*debug.BuildInfo, bool)) error {
	_, err := fmt.Fprintf(w, "sshca %s\n", versionLine(read))
	return err
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and commit of this binary (also: sshca --version)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printVersion(cmd.OutOrStdout(), debug.ReadBuildInfo)
		},
	}
}
