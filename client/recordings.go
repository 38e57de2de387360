package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/sshca/sshca/ca"
)

// RecordingAccepted is the answer to a shipped batch of a session's recording
// (POST /v1/recordings/{id}): how many lines of the agent's file the CA has now.
type RecordingAccepted = ca.RecordingAccepted

// RecordingList is the answer of GET /v1/recordings: the recorded sessions that match, oldest
// first, each as the CA keeps it (header, host, how far it arrived, how it ended, commands).
type RecordingList struct {
	Sessions []ca.SessionRecording `json:"sessions"`
	// NextCursor, absent on the last page, is the cursor parameter of the next page
	// (GET /v1/recordings?limit=N&cursor=…, as GET /v1/certs).
	NextCursor string `json:"next_cursor,omitempty"`
}

// RecordingDetail is the answer of GET /v1/recordings/{id}: the session's record and its kept
// lines, exactly as stored (JSON lines of the recording format, ca.ReadRecording reads them
// joined by newlines; a "cut" line stands for chunks past the CA's caps).
type RecordingDetail struct {
	Recording ca.SessionRecording `json:"recording"`
	Lines     []string            `json:"lines"`
}

// RecordingQuery selects sessions in GET /v1/recordings: identity (the key ID's identity
// part), principal (the account), since (RFC 3339, start at or after), live (no end yet).
type RecordingQuery struct {
	Identity  string
	Principal string
	Since     time.Time
	Live      bool
	// Limit is the size of a page (0: the server's default, DefaultPageLimit).
	Limit int
}

// ShipRecording sends one batch of a session's recording (POST /v1/recordings/{id}?offset=N):
// complete JSON lines of the agent's file from line offset, under a proof
// (ca.SignRecordProof) over these exact bytes.
func (c *Client) ShipRecording(ctx context.Context, proof, session string, offset int64, batch []byte) (RecordingAccepted, error) {
	ctx, cancel := context.WithTimeout(ctx, PostTimeout)
	defer cancel()
	u := c.server + "/v1/recordings/" + url.PathEscape(session) + "?offset=" + strconv.FormatInt(offset, 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(batch))
	if err != nil {
		return RecordingAccepted{}, err
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	var out RecordingAccepted
	data, _, err := c.send(req, proof)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return out, fmt.Errorf("POST /v1/recordings: unreadable answer: %w", err)
	}
	return out, nil
}

// Recordings lists recorded sessions (GET /v1/recordings; policy kind "read"), oldest first:
// it asks page after page until the server gives no next cursor.
func (c *Client) Recordings(ctx context.Context, token string, q RecordingQuery) ([]ca.SessionRecording, error) {
	all := []ca.SessionRecording{}
	err := followPages(ctx, "/v1/recordings", func(ctx context.Context, cursor string) (string, int, error) {
		page, err := c.RecordingsPage(ctx, token, q, cursor)
		all = append(all, page.Sessions...)
		return page.NextCursor, len(all), err
	}, nil)
	if err != nil {
		return nil, err
	}
	return all, nil
}

// RecordingsPage asks for one page of the recorded sessions q selects, after cursor (a
// NextCursor of the page before; "" for the first).
func (c *Client) RecordingsPage(ctx context.Context, token string, q RecordingQuery, cursor string) (RecordingList, error) {
	v := url.Values{}
	if q.Identity != "" {
		v.Set("identity", q.Identity)
	}
	if q.Principal != "" {
		v.Set("principal", q.Principal)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339))
	}
	if q.Live {
		v.Set("live", "true")
	}
	path := pagePath("/v1/recordings", v, q.Limit, cursor)
	var out RecordingList
	err := c.do(ctx, http.MethodGet, path, token, nil, &out, GetTimeout, MaxListBytes)
	return out, err
}

// MaxRecordingAnswerBytes bounds the answer of GET /v1/recordings/{id}: a session at the
// CA's default cap (64 MiB of lines) with its JSON escaping fits.
const MaxRecordingAnswerBytes = 256 << 20

// Recording fetches one session's record and lines (GET /v1/recordings/{id}; policy kind
// "read").
func (c *Client) Recording(ctx context.Context, token, id string) (RecordingDetail, error) {
	var out RecordingDetail
	ctx, cancel := context.WithTimeout(ctx, 2*GetTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+"/v1/recordings/"+url.PathEscape(id), nil)
	if err != nil {
		return out, err
	}
	data, _, err := c.sendMax(req, token, MaxRecordingAnswerBytes)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return out, fmt.Errorf("GET /v1/recordings/%s: unreadable answer: %w", id, err)
	}
	return out, nil
}
