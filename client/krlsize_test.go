package client_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/sshca/sshca/client"
	"github.com/sshca/sshca/internal/bodylimit"
	"github.com/sshca/sshca/krl"
)

// TestKRLOverOneMiB: a KRL is read up to MaxKRLBytes, not the 1 MiB of a JSON answer. A
// host KRL of 40,000 banned keys (1.3 MiB, PROTOCOL.krl) is what sshca login installs for
// clients' RevokedHostKeys; bounded at 1 MiB, login failed once the list grew past it, and
// clients kept trusting every host revoked since. Both KRLs are read whole and decode; one
// that announces more than MaxKRLBytes is refused before it is read.
func TestKRLOverOneMiB(t *testing.T) {
	k := &krl.KRL{Version: 7}
	for i := range 40000 {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		k.RevokedSHA256 = append(k.RevokedSHA256, sha256.Sum256(b[:]))
	}
	data, err := k.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(data) <= client.MaxAnswerBytes {
		t.Fatalf("the KRL is %d bytes: the test does not test a KRL over MaxAnswerBytes", len(data))
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(data) }))
	defer srv.Close()
	hugeSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.FormatInt(client.MaxKRLBytes+1, 10)) // announced, never sent
	}))
	defer hugeSrv.Close()
	ctx := context.Background()
	c := client.New(srv.URL)
	host, err := c.HostKRL(ctx)
	if err != nil {
		t.Fatalf("host KRL of %d bytes: %v", len(data), err)
	}
	user, err := c.KRL(ctx, "")
	if err != nil {
		t.Fatalf("user KRL of %d bytes: %v", len(data), err)
	}
	for name, b := range map[string][]byte{"host": host, "user": user.Data} {
		if got, err := krl.Parse(b); err != nil || got.Version != 7 || len(got.RevokedSHA256) != 40000 {
			t.Errorf("%s KRL read: %v, want all 40,000 hashes of version 7", name, err)
		}
	}
	huge := client.New(hugeSrv.URL)
	var be *bodylimit.Error
	if _, err := huge.HostKRL(ctx); !errors.As(err, &be) || be.Limit != client.MaxKRLBytes {
		t.Errorf("a host KRL announced at MaxKRLBytes+1: %v, want a *bodylimit.Error with the bound %d", err, client.MaxKRLBytes)
	}
}
