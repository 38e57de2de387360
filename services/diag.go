package services

import (
	"context"
	"errors"
	"net/http"
)

// MountDiag mounts, on mux, what the platform's probes and scrapers read and the public
// service does not show: GET /readyz with every check by name, its error and the details
// (policy revision, refused reloads, last policy fault), GET /metrics (metrics, when not nil)
// and GET /healthz. mux is meant for a listener of its own (diag_listen in cmd/sshca), reachable
// from inside the platform only: check errors name internal addresses, and metrics describe
// the load and the key ring.
func MountDiag(mux *http.ServeMux, ready func(context.Context) map[string]error, details func() map[string]string, metrics http.Handler) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", readyHandler(ready, details))
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
}

// errNotReady is what the public /readyz says when details are served elsewhere.
var errNotReady = errors.New("details on the diagnostics listener")

// ReadyStatus is ready for the public /readyz when MountDiag serves the details: the same
// answer (200 ready, 503 not ready, within ReadyTimeout) with one check named "ready" and no
// dependency names or error texts.
func ReadyStatus(ready func(context.Context) map[string]error) func(context.Context) map[string]error {
	return func(ctx context.Context) map[string]error {
		for _, err := range ready(ctx) {
			if err != nil {
				return map[string]error{"ready": errNotReady}
			}
		}
		return map[string]error{"ready": nil}
	}
}
