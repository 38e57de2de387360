package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/sshca/sshca/services"
)

// logOptions are --log-format and --log-level, the one logging setup of serve, dev and
// bastion agent.
type logOptions struct {
	format, level string
}

// addLogFlags registers --log-format (default defaultFormat) and --log-level on cmd.
func addLogFlags(cmd *cobra.Command, o *logOptions, defaultFormat string) {
	fs := cmd.Flags()
	fs.StringVar(&o.format, "log-format", defaultFormat, "log line format: json (one JSON object a line) or text (key=value)")
	fs.StringVar(&o.level, "log-level", "info", "least severe level logged: debug, info, warn or error")
}

// newLogger is the process's logger, writing to w in the chosen format from the chosen level
// up. Every line logged under a request names its X-Request-ID (services.LogRequestIDs), and
// the Redis client's own messages (pool and reconnect notices, which go-redis otherwise prints
// to stderr in its own format) go through it at warn level with component=redis. That last
// setting is go-redis's one process-wide logger: the latest call wins.
func newLogger(w io.Writer, o logOptions) (*slog.Logger, error) {
	var level slog.Level
	switch strings.ToLower(o.level) {
	case "debug":
		level = slog.LevelDebug
	case "info", "":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(o.format) {
	case "json":
		h = slog.NewJSONHandler(w, opts)
	case "text", "":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want json or text", o.format)
	}
	log := services.LogRequestIDs(slog.New(h))
	redis.SetLogger(redisLogger{log: log})
	return log, nil
}

// redisLogger passes go-redis's messages (its internal Logging interface) to slog.
type redisLogger struct{ log *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.log.Log(ctx, slog.LevelWarn, strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "redis")
}
