package services

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-kit/kit/endpoint"
	kithttp "github.com/go-kit/kit/transport/http"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

// Discovery is the API of long-lived key discovery (issue 18 §2): hosts report with a proof
// signed by their host key (POST /v1/discovery), admins list (GET /v1/discovery).
// ca.DiscoveryDesk implements it.
type Discovery interface {
	AcceptDiscovery(ctx context.Context, token string, report []byte) (string, []string, error)
	DisableDiscovered(ctx context.Context, token, host, fingerprint, reason string) error
	// DiscoveriesPage lists a page of the hosts' last reports, by host name.
	DiscoveriesPage(ctx context.Context, token string, after ca.DiscoveryCursor, limit int) (ca.DiscoveryPage, error)
}

var _ Discovery = ca.DiscoveryDesk{}

type discoveryCall struct {
	list    bool
	after   ca.DiscoveryCursor // list: the page
	limit   int
	disable *client.DiscoveryDisableRequest
	token   string
	report  []byte
}

type discoveryAccepted struct {
	client.DiscoveryAccepted
	Err error `json:"-"`
}

type discoveryDisabled struct {
	Ordered bool  `json:"ordered"`
	Err     error `json:"-"`
}

func (r discoveryDisabled) Failed() error { return r.Err }

func (r discoveryAccepted) Failed() error { return r.Err }

type discoveryListResponse struct {
	client.DiscoveryList
	Err error `json:"-"`
}

func (r discoveryListResponse) Failed() error { return r.Err }

func makeDiscoveryEndpoint(s Discovery, log *slog.Logger) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		c := request.(discoveryCall)
		if d := c.disable; d != nil {
			err := s.DisableDiscovered(ctx, c.token, d.Host, d.Fingerprint, d.Reason)
			if err == nil {
				log.InfoContext(ctx, "discovery disable ordered", "host", d.Host, "fingerprint", d.Fingerprint)
			}
			return discoveryDisabled{Ordered: err == nil, Err: err}, nil
		}
		if !c.list {
			begin := time.Now()
			host, orders, err := s.AcceptDiscovery(ctx, c.token, c.report)
			if err == nil {
				log.InfoContext(ctx, "discovery report", "host", host, "bytes", len(c.report), "disable", len(orders), "took", time.Since(begin))
			}
			if orders == nil {
				orders = []string{}
			}
			return discoveryAccepted{DiscoveryAccepted: client.DiscoveryAccepted{Host: host, Disable: orders}, Err: err}, nil
		}
		page, err := s.DiscoveriesPage(ctx, c.token, c.after, c.limit)
		out := client.DiscoveryList{Hosts: []client.DiscoveryRecord{}, NextCursor: page.Next.String()}
		for _, r := range page.Records {
			cr := client.DiscoveryRecord{Host: r.Host, Received: r.Received}
			// Validated on the way in; a record that no longer reads is shown with its host only.
			_ = json.Unmarshal(r.Report, &cr.Report)
			out.Hosts = append(out.Hosts, cr)
		}
		return discoveryListResponse{DiscoveryList: out, Err: err}, nil
	}
}

// decodeDiscoveryReport reads the report's exact bytes (the proof is over them), at most
// MaxBodyBytes, and checks they are one client.DiscoveryReport with no unknown field.
func decodeDiscoveryReport(_ context.Context, r *http.Request) (any, error) {
	if err := checkContentType(r); err != nil {
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		return nil, ca.Invalid("reading request body failed; send the body again")
	}
	if len(body) > MaxBodyBytes {
		return nil, errTooLarge
	}
	var rep client.DiscoveryReport
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		return nil, ca.Invalid("discovery report: %s", jsonProblem(err))
	}
	if !onlySpaceAfter(body, dec) {
		return nil, ca.Invalid("discovery report: unexpected data after the JSON object; send one JSON object")
	}
	c := discoveryCall{report: body}
	if c.token, err = bearer(r); err != nil {
		return nil, err
	}
	return c, nil
}

func decodeDiscoveryDisable(_ context.Context, r *http.Request) (any, error) {
	var d client.DiscoveryDisableRequest
	if err := decodeJSON(r, &d); err != nil {
		return nil, err
	}
	token, err := bearer(r)
	return discoveryCall{disable: &d, token: token}, err
}

func decodeDiscoveryList(_ context.Context, r *http.Request) (any, error) {
	token, err := bearer(r)
	if err != nil {
		return nil, err
	}
	c := discoveryCall{list: true, token: token}
	q := r.URL.Query()
	if c.limit, err = pageLimit(q); err != nil {
		return nil, err
	}
	c.after, err = ca.ParseDiscoveryCursor(q.Get("cursor"))
	return c, err
}

// mountDiscovery mounts POST and GET /v1/discovery and POST /v1/discovery/disable.
func mountDiscovery(mux *http.ServeMux, s Discovery, log *slog.Logger, encodeResponse kithttp.EncodeResponseFunc, opts []kithttp.ServerOption) {
	e := makeDiscoveryEndpoint(s, log)
	mux.Handle("POST /v1/discovery", kithttp.NewServer(e, decodeDiscoveryReport, encodeResponse, opts...))
	mux.Handle("GET /v1/discovery", kithttp.NewServer(e, decodeDiscoveryList, encodeResponse, opts...))
	mux.Handle("POST /v1/discovery/disable", kithttp.NewServer(e, decodeDiscoveryDisable, encodeResponse, opts...))
}
