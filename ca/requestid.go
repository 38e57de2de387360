package ca

import "context"

type requestIDKey struct{}

// WithRequestID returns ctx carrying id, the request ID the transport gave this request (for
// HTTP the X-Request-ID header, see services.RequestID). The Authority copies it into the
// audit records it keeps under ctx, and log handlers may add it to every line.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID is the request ID ctx carries, or "" when it carries none.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}
