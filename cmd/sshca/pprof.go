package main

import (
	"net/http"
	"net/http/pprof"
)

// mountPprof mounts net/http/pprof's handlers on mux (diag_pprof), explicitly: the package's
// init registers them on http.DefaultServeMux, which sshca never serves. A CPU profile
// (/debug/pprof/profile?seconds=N) may outlast the write timeout; pprof extends the deadline.
func mountPprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
