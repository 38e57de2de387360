package services

import (
	"context"
	"net/http"

	"github.com/go-kit/kit/endpoint"
	kithttp "github.com/go-kit/kit/transport/http"

	"github.com/sshca/sshca/ca"
	"github.com/sshca/sshca/client"
)

// KeyAdmin is CA key administration (rotation), each call authorized by the policy as kind
// "admin".
type KeyAdmin interface {
	Keys(ctx context.Context, token string) (ca.Keyring, error)
	GenerateKey(ctx context.Context, token string, kind ca.CertKind, keyType string) (ca.CAKey, error)
	PromoteKey(ctx context.Context, token string, kind ca.CertKind, force bool) (ca.CAKey, error)
	RetireKey(ctx context.Context, token, fingerprint string, force bool) (ca.CAKey, error)
	CompromisedKey(ctx context.Context, token, fingerprint string) (ca.CAKey, error)
}

// keyRequest is the body of the POST /v1/keys/... calls as sent, with the operation its path
// names and the bearer token.
type keyRequest struct {
	client.KeyRequest

	op    string
	token string
}

type keyResponse struct {
	client.KeyResponse
	Err error `json:"-"`
}

func (r keyResponse) Failed() error { return r.Err }

func makeKeyEndpoint(k KeyAdmin) endpoint.Endpoint {
	return func(ctx context.Context, request any) (any, error) {
		req := request.(keyRequest)
		if req.token == "" {
			return keyResponse{Err: errMissingToken}, nil
		}
		kind := ca.CertKind(req.CA)
		needCA := req.op == "generate" || req.op == "promote"
		if needCA && kind != ca.UserCert && kind != ca.HostCert {
			return keyResponse{Err: ca.Invalid("ca must be \"user\" or \"host\"")}, nil
		}
		if (req.op == "retire" || req.op == "compromised") && req.Fingerprint == "" {
			return keyResponse{Err: ca.Invalid("fingerprint is required (SHA256:...; see sshca keys list)")}, nil
		}
		var key ca.CAKey
		var err error
		switch req.op {
		case "list":
			ring, err := k.Keys(ctx, req.token)
			if err != nil {
				return keyResponse{Err: err}, nil
			}
			return keyResponse{KeyResponse: client.KeyResponse{Ring: &ring}}, nil
		case "generate":
			key, err = k.GenerateKey(ctx, req.token, kind, req.Type)
		case "promote":
			key, err = k.PromoteKey(ctx, req.token, kind, req.Force)
		case "retire":
			key, err = k.RetireKey(ctx, req.token, req.Fingerprint, req.Force)
		case "compromised":
			key, err = k.CompromisedKey(ctx, req.token, req.Fingerprint)
		}
		if err != nil {
			return keyResponse{Err: err}, nil
		}
		return keyResponse{KeyResponse: client.KeyResponse{Key: &key}}, nil
	}
}

func mountKeys(mux *http.ServeMux, k KeyAdmin, encodeResponse kithttp.EncodeResponseFunc, opts []kithttp.ServerOption) {
	e := makeKeyEndpoint(k)
	decode := func(op string) kithttp.DecodeRequestFunc {
		return func(_ context.Context, r *http.Request) (any, error) {
			req := keyRequest{}
			if op != "list" {
				if err := decodeJSON(r, &req.KeyRequest); err != nil {
					return nil, err
				}
			}
			req.op = op
			var err error
			if req.token, err = bearer(r); err != nil {
				return nil, err
			}
			return req, nil
		}
	}
	mux.Handle("GET /v1/keys", kithttp.NewServer(e, decode("list"), encodeResponse, opts...))
	for _, op := range []string{"generate", "promote", "retire", "compromised"} {
		mux.Handle("POST /v1/keys/"+op, kithttp.NewServer(e, decode(op), encodeResponse, opts...))
	}
}
