package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// DiscoveredKey is one key of an authorized_keys file found by a host's discovery: a way to
// log in that bypasses certificates (issue 18 §2).
type DiscoveredKey struct {
	Account string `json:"account"` // the local account the file lets in
	File    string `json:"file"`    // absolute path, AuthorizedKeysFile with %h %u %U %% expanded
	Line    int    `json:"line"`    // 1-based line of the key in File
	// Fingerprint is OpenSSH's SHA256 fingerprint ("SHA256:" + unpadded base64), as sshd logs it.
	Fingerprint string `json:"fingerprint"`
	Type        string `json:"type"` // the key's algorithm name, e.g. ssh-ed25519, ssh-rsa
	Bits        int    `json:"bits"` // key size in bits (RSA modulus, ECDSA curve; 256 for Ed25519)
	// Options are the line's options as written (from="10.0.0.0/8", command="...",
	// cert-authority), in order.
	Options []string `json:"options,omitempty"`
	Comment string   `json:"comment,omitempty"`
	// FileModTime is File's modification time.
	FileModTime time.Time `json:"file_mtime"`
	// LastAccepted is the newest time sshd's log shows the key accepted for Account (an
	// "Accepted publickey" line of a plain key, never a certificate); nil when the log read
	// has none.
	LastAccepted *time.Time `json:"last_accepted,omitempty"`
}

// SkippedFile is an authorized_keys path that exists but was not read, and why: a symbolic
// link at some component, not a regular file, larger than the cap, unreadable.
type SkippedFile struct {
	Account string `json:"account"`
	File    string `json:"file"`
	Reason  string `json:"reason"`
}

// DiscoveryReport is a host's inventory of the ways in that bypass certificates.
type DiscoveryReport struct {
	Host  string          `json:"host"`  // the host name the report is for
	Taken time.Time       `json:"taken"` // when discovery ran, host clock
	Keys  []DiscoveredKey `json:"keys"`
	// Skipped files exist but could not be inspected safely; each may still let someone in.
	Skipped []SkippedFile `json:"skipped,omitempty"`
	// Accounts is how many accounts of the password database were inspected; AccountsTruncated
	// says the database had more than the cap.
	Accounts          int  `json:"accounts"`
	AccountsTruncated bool `json:"accounts_truncated,omitempty"`
	// AuthorizedKeysCommand is sshd's effective command ("" when none), reported, never run,
	// and the user it runs as.
	AuthorizedKeysCommand     string `json:"authorized_keys_command,omitempty"`
	AuthorizedKeysCommandUser string `json:"authorized_keys_command_user,omitempty"`
	// Password and keyboard-interactive authentication as sshd's effective configuration has
	// them (sshd -T).
	PasswordAuthentication       bool `json:"password_authentication"`
	KbdInteractiveAuthentication bool `json:"kbd_interactive_authentication"`
}

// DiscoveryRecord is a host's last report as the CA keeps it: when it was received (CA
// clock) and the report.
type DiscoveryRecord struct {
	Host     string          `json:"host"`
	Received time.Time       `json:"received"`
	Report   DiscoveryReport `json:"report"`
}

// DiscoveryList is the answer of GET /v1/discovery[?limit=N][&cursor=…]: one page of the
// hosts' last reports, by host name, at most limit hosts; NextCursor, absent on the last page,
// is the cursor parameter of the next.
type DiscoveryList struct {
	Hosts      []DiscoveryRecord `json:"hosts"`
	NextCursor string            `json:"next_cursor,omitempty"`
}

// DiscoveryAccepted is the answer to a report: the host it was kept under, and the
// fingerprints of keys an admin ordered disabled there that the report still lists.
type DiscoveryAccepted struct {
	Host    string   `json:"host"`
	Disable []string `json:"disable"`
}

// DiscoveryDisableRequest is the body of POST /v1/discovery/disable.
type DiscoveryDisableRequest struct {
	Host        string `json:"host"`
	Fingerprint string `json:"fingerprint"`
	Reason      string `json:"reason"`
}

// DisableDiscovered orders a host to comment out a key (POST /v1/discovery/disable; admins).
func (c *Client) DisableDiscovered(ctx context.Context, token string, req DiscoveryDisableRequest) error {
	return c.Do(ctx, http.MethodPost, "/v1/discovery/disable", token, req, nil)
}

// ReportDiscovery sends a host's report (POST /v1/discovery). body is the report's JSON
// exactly as proof signed it (ca.SignDiscoverProof binds the proof to these bytes).
func (c *Client) ReportDiscovery(ctx context.Context, proof string, body []byte) (DiscoveryAccepted, error) {
	ctx, cancel := context.WithTimeout(ctx, PostTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.server+"/v1/discovery", bytes.NewReader(body))
	if err != nil {
		return DiscoveryAccepted{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	var out DiscoveryAccepted
	data, _, err := c.send(req, proof)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return out, fmt.Errorf("POST /v1/discovery: unreadable answer: %w", err)
	}
	return out, nil
}

// Discoveries lists every host's last discovery report (GET /v1/discovery; admins), by host
// name: it asks page after page of limit hosts (0: the server's default, DefaultPageLimit)
// until the server gives no next cursor, calling onPage, when set, after each with how many
// pages and hosts have come so far.
func (c *Client) Discoveries(ctx context.Context, token string, limit int, onPage func(pages, hosts int)) ([]DiscoveryRecord, error) {
	all := []DiscoveryRecord{}
	err := followPages(ctx, "/v1/discovery", func(ctx context.Context, cursor string) (string, int, error) {
		page, err := c.DiscoveriesPage(ctx, token, limit, cursor)
		all = append(all, page.Hosts...)
		return page.NextCursor, len(all), err
	}, onPage)
	if err != nil {
		return nil, err
	}
	return all, nil
}

// DiscoveriesPage asks for one page of GET /v1/discovery after cursor (a NextCursor of the page
// before; "" for the first), limit hosts at most (0: the server's default).
func (c *Client) DiscoveriesPage(ctx context.Context, token string, limit int, cursor string) (DiscoveryList, error) {
	var out DiscoveryList
	err := c.do(ctx, http.MethodGet, pagePath("/v1/discovery", url.Values{}, limit, cursor), token, nil, &out, GetTimeout, MaxListBytes)
	return out, err
}
