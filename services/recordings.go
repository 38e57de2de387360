package services

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/go-kit/kit/endpoint"
	kithttp "github.com/go-kit/kit/transport/http"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

// Recordings is the API of session recordings (issue 18 §1): bastion agents ship each
// session's recording in batches with a proof signed by their host key
// (POST /v1/recordings/{id}), readers list and fetch them (GET /v1/recordings[/{id}], policy
// kind "read"). ca.RecordingDesk implements it.
type Recordings interface {
	AcceptRecording(ctx context.Context, token, session string, offset int64, batch []byte) (ca.RecordingAccepted, error)
	SessionRecordings(ctx context.Context, token string, f ca.RecordingFilter) (ca.RecordingPage, error)
	SessionRecordingLines(ctx context.Context, token, id string) (ca.SessionRecording, [][]byte, error)
}

var _ Recordings = ca.RecordingDesk{}

type recordingCall struct {
	token   string
	session string
	offset  int64
	batch   []byte // a shipped batch (POST)
	list    *ca.RecordingFilter
}

type recordingAccepted struct {
	ca.RecordingAccepted
	Err error `json:"-"`
}

func (r recordingAccepted) Failed() error { return r.Err }

type recordingList struct {
	client.RecordingList
	Err error `json:"-"`
}

func (r recordingList) Failed() error { return r.Err }

type recordingDetail struct {
	client.RecordingDetail
	Err error `json:"-"`
}

func (r recordingDetail) Failed() error { return r.Err }

func makeRecordingsEndpoint(s Recordings, log *slog.Logger) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		c := request.(recordingCall)
		switch {
		case c.batch != nil:
			got, err := s.AcceptRecording(ctx, c.token, c.session, c.offset, c.batch)
			if err == nil {
				log.DebugContext(ctx, "recording batch", "session", c.session, "offset", c.offset, "bytes", len(c.batch), "received", got.Received)
			}
			return recordingAccepted{RecordingAccepted: got, Err: err}, nil
		case c.list != nil:
			page, err := s.SessionRecordings(ctx, c.token, *c.list)
			recs := page.Sessions
			if recs == nil {
				recs = []ca.SessionRecording{}
			}
			return recordingList{RecordingList: client.RecordingList{Sessions: recs, NextCursor: page.Next.String()}, Err: err}, nil
		}
		rec, lines, err := s.SessionRecordingLines(ctx, c.token, c.session)
		out := client.RecordingDetail{Recording: rec, Lines: make([]string, len(lines))}
		for i, l := range lines {
			out.Lines[i] = string(l)
		}
		return recordingDetail{RecordingDetail: out, Err: err}, nil
	}
}

// errBatchTooLarge answers a batch over ca.MaxRecordingBatch (413).
var errBatchTooLarge = errors.New("recording batch exceeds 1 MiB; send fewer lines at a time")

// decodeRecordingBatch reads a batch's exact bytes (the proof is over them): JSON lines, at
// most ca.MaxRecordingBatch, with the offset of its first line in ?offset=.
func decodeRecordingBatch(_ context.Context, r *http.Request) (any, error) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-ndjson" {
		return nil, ca.Invalid("Content-Type must be application/x-ndjson (the recording's JSON lines)")
	}
	c := recordingCall{session: r.PathValue("id")}
	var err error
	if c.offset, err = strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64); err != nil || c.offset < 0 {
		return nil, ca.Invalid("offset %q: want the number of the batch's first line, from 0 (the header)", r.URL.Query().Get("offset"))
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, ca.MaxRecordingBatch+1))
	if err != nil {
		return nil, ca.Invalid("reading request body failed; send the body again")
	}
	if len(body) > ca.MaxRecordingBatch {
		return nil, errBatchTooLarge
	}
	c.batch = body
	if c.token, err = bearer(r); err != nil {
		return nil, err
	}
	return c, nil
}

func decodeRecordingList(_ context.Context, r *http.Request) (any, error) {
	token, err := bearer(r)
	if err != nil {
		return nil, err
	}
	if token == "" {
		return nil, errMissingToken
	}
	q := r.URL.Query()
	f := ca.RecordingFilter{Identity: q.Get("identity"), Principal: q.Get("principal")}
	if v := q.Get("since"); v != "" {
		if f.Since, err = time.Parse(time.RFC3339, v); err != nil {
			return nil, ca.Invalid("since %q: want an RFC 3339 time (GET /v1/recordings?since=2026-11-29T00:00:00Z)", v)
		}
	}
	if v := q.Get("live"); v != "" {
		if f.Live, err = strconv.ParseBool(v); err != nil {
			return nil, ca.Invalid("live %q: want true or false (GET /v1/recordings?live=true)", v)
		}
	}
	if f.Limit, err = pageLimit(q); err != nil {
		return nil, err
	}
	if f.After, err = ca.ParseRecordingCursor(q.Get("cursor")); err != nil {
		return nil, err
	}
	return recordingCall{token: token, list: &f}, nil
}

func decodeRecordingGet(_ context.Context, r *http.Request) (any, error) {
	token, err := bearer(r)
	if err != nil {
		return nil, err
	}
	if token == "" {
		return nil, errMissingToken
	}
	return recordingCall{token: token, session: r.PathValue("id")}, nil
}

// mountRecordings mounts POST /v1/recordings/{id} and GET /v1/recordings[/{id}].
func mountRecordings(mux *http.ServeMux, s Recordings, log *slog.Logger, encodeResponse kithttp.EncodeResponseFunc, opts []kithttp.ServerOption) {
	e := makeRecordingsEndpoint(s, log)
	mux.Handle("POST /v1/recordings/{id}", kithttp.NewServer(e, decodeRecordingBatch, encodeResponse, opts...))
	mux.Handle("GET /v1/recordings", kithttp.NewServer(e, decodeRecordingList, encodeResponse, opts...))
	mux.Handle("GET /v1/recordings/{id}", kithttp.NewServer(e, decodeRecordingGet, encodeResponse, opts...))
}
