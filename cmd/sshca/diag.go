package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
)

// serveDiag serves mux (services.MountDiag: /metrics, detailed /readyz, /healthz) on addr until
// ctx ends. With mux nil (diag_listen: "") it only says where the diagnostics are instead.
// The listener is open when it returns, so probes and scrapers find it as soon as the public
// listener answers.
func serveDiag(ctx context.Context, addr string, mux *http.ServeMux, log *slog.Logger) error {
	if mux == nil {
		log.Warn("diag_listen is off: /metrics and the /readyz details are served on the public listener")
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("diag_listen: %w", err)
	}
	log.Info("sshca diagnostics", "addr", l.Addr().String(), "paths", "/metrics /readyz /healthz")
	go func() {
		if err := serveUntilDone(ctx, newHTTPServer(mux, log), l, "", ""); err != nil {
			log.Error("diagnostics listener stopped; /metrics and /readyz details are gone until restart", "err", err)
		}
	}()
	return nil
}
