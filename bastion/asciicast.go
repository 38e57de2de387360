package bastion

import (
	"io"

	"github.com/sshca/sshca/ca"
)

// ExportAsciicast writes r as asciicast v2 (ca.ExportAsciicast, which the CA's web console
// shares).
func ExportAsciicast(w io.Writer, r *Recording) error { return ca.ExportAsciicast(w, r) }
