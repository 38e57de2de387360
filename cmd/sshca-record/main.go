// Command sshca-record is the session recorder that sshd runs as ForceCommand on a bastion
// (see the Match block of deploy/bastion/sshd_config): it runs what the session asked for, or
// the certificate's force-command, and streams its output to the bastion agent's socket. It is
// a separate small binary because it is installed setgid to the group that owns that socket;
// setting the whole sshca binary setgid would make every subcommand setgid.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/sshca/sshca/bastion"
)

func main() {
	var o bastion.RecorderOptions
	var privileged string
	fs := flag.NewFlagSet("sshca-record", flag.ContinueOnError)
	fs.StringVar(&o.Socket, "socket", bastion.DefaultRecordSocket, "the agent's recording socket")
	fs.StringVar(&o.Spool, "spool", "", "directory to record into when the agent is unreachable (empty: refuse the session); "+
		"written as the session user, so it proves nothing against them")
	fs.StringVar(&privileged, "privileged", "root", "comma-separated accounts whose sessions are refused whenever the agent is unreachable")
	fs.StringVar(&o.SFTPServer, "sftp-server", bastion.DefaultSFTPServer, "the sftp server binary sftp subsystem requests run")
	fs.BoolVar(&o.RecordInput, "record-input", false, "record what the user types too (people type secrets)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "sshca-record: unexpected arguments %q: the session's command comes from the certificate or $SSH_ORIGINAL_COMMAND\n", fs.Args())
		os.Exit(2)
	}
	for _, p := range strings.Split(privileged, ",") {
		if p = strings.TrimSpace(p); p != "" {
			o.Privileged = append(o.Privileged, p)
		}
	}
	os.Exit(bastion.Record(o))
}
