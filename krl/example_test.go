package krl_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sshca/sshca/krl"
)

func Example() {
	_, caPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	ca, err := ssh.NewSignerFromKey(caPriv)
	if err != nil {
		log.Fatal(err)
	}

	// Revoke what the CA issued: single serials, a run of serials and a key ID.
	k := &krl.KRL{Version: 1, GeneratedDate: time.Now(), Comment: "sshca user CA"}
	k.RevokeSerials(ca.PublicKey(), 17, 4242)
	k.RevokeSerialRange(ca.PublicKey(), 1000, 1999)
	k.RevokeKeyIDs(ca.PublicKey(), "stolen-laptop")
	data, err := k.MarshalBinary() // write this where sshd's RevokedKeys points
	if err != nil {
		log.Fatal(err)
	}

	// Read it back and check certificates against it.
	parsed, err := krl.Parse(data)
	if err != nil {
		log.Fatal(err)
	}
	userPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	key, err := ssh.NewPublicKey(userPub)
	if err != nil {
		log.Fatal(err)
	}
	for _, serial := range []uint64{1500, 2000} {
		cert := &ssh.Certificate{Key: key, Serial: serial, KeyId: "alice", CertType: ssh.UserCert}
		if err := cert.SignCert(rand.Reader, ca); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("serial %d revoked: %v\n", serial, parsed.IsRevoked(cert))
	}
	// Output:
	// serial 1500 revoked: true
	// serial 2000 revoked: false
}
