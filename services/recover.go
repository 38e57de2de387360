package services

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"runtime"
	"runtime/debug"

	"github.com/sshca/sshca/client"
)

// Recover answers for a handler of next that panics, which net/http would otherwise hide: it
// recovers the panic, closes the connection and logs one line without the request ID, and the
// client sees a reset. Recover logs the panic at error level with the method, the path and the
// request ID (the X-Request-ID header RequestID set on the answer; never a request header or
// the body, which may hold a token), as panicFields renders it (its type and stack, its value
// only when the runtime made it), then:
//
//   - when nothing was written yet, answers 500 {"error": "internal error (request ID …)"},
//     so the caller has the ID to quote and the HTTP metrics count a 500;
//   - when the answer had begun (a status or a byte sent, the connection hijacked), panics
//     again with http.ErrAbortHandler: net/http then cuts the connection without logging a
//     second time, and the client sees a truncated answer rather than a complete-looking one;
//     a connection the handler took over is closed by Recover, which net/http would not do.
//
// A handler's own panic(http.ErrAbortHandler) is net/http's deliberate abort: passed on
// unlogged. InstrumentHTTP, inside or outside Recover, counts a panic that passes it as a 500.
// Put Recover outermost (newHTTPServer in cmd/sshca does, for every server of the binary).
func Recover(log *slog.Logger, next http.Handler) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw, ok := w.(*statusWriter)
		if !ok {
			sw = &statusWriter{ResponseWriter: w}
		}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
				panic(v)
			}
			id := w.Header().Get(RequestIDHeader)
			// Without the context: the ID is given here, whether or not a RequestID inside
			// put it into the request's context for LogRequestIDs.
			log.Error("handler panicked", "method", r.Method, "path", r.URL.Path,
				"request_id", id, "answer_begun", sw.code != 0, panicFields(v, debug.Stack()))
			if sw.conn != nil {
				// Taken over: net/http would leave it open, and the client waiting.
				sw.conn.Close()
			}
			if sw.code != 0 {
				panic(http.ErrAbortHandler)
			}
			msg := "internal error"
			if id != "" {
				msg += " (request ID " + id + ")"
			}
			writeJSON(sw, http.StatusInternalServerError, client.ErrorBody{Error: msg})
		}()
		next.ServeHTTP(sw, r)
	})
}

// maxPanicStack bounds the stack a panic's log line carries (bytes): the frames nearest the
// panic come first and say where it was; a deep recursion would otherwise put megabytes on one
// line.
const maxPanicStack = 8 << 10

// panicFields renders a recovered panic for the log without what it may carry of a request: a
// handler's panic(err) or panic(fmt.Sprintf(...)) may hold a bearer token, a key or a body
// that a library put into its error text, and the log outlives the request. So the value
// itself is logged only when the runtime made it (a runtime.Error of package runtime: nil
// dereference, index out of range, failed type assertion; their texts name types and indexes,
// never data); any other is logged by its type alone ("panic_type"). The stack (at most
// maxPanicStack bytes) holds function names, files, lines and argument words in hexadecimal,
// never what a string or slice argument points at, so it says where without saying what.
func panicFields(v any, stack []byte) slog.Attr {
	attrs := []any{"type", fmt.Sprintf("%T", v)}
	if err, ok := v.(runtime.Error); ok && madeByRuntime(err) {
		attrs = append(attrs, "value", err.Error())
	}
	if len(stack) > maxPanicStack {
		stack = append(stack[:maxPanicStack:maxPanicStack], "\n… (cut)"...)
	}
	attrs = append(attrs, "stack", string(stack))
	return slog.Group("panic", attrs...)
}

// madeByRuntime reports whether err's type is declared in package runtime: any package may
// implement runtime.Error (its RuntimeError method is exported), and then its text is its own.
func madeByRuntime(err error) bool {
	t := reflect.TypeOf(err)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.PkgPath() == "runtime"
}
