// Package logging builds vipd's one slog handler and routes client-go's klog
// output into it, so that every line an agent writes has one format (text or
// JSON) and one level setting, whatever library wrote it.
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"k8s.io/klog/v2"
)

// Formats accepted by New.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// New returns a logger writing to w in format (text or json) at level.
func New(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case FormatText, "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("unknown log format %q (use text or json)", format)
}

// RouteKlog sends klog's output (client-go's reflectors, leader election,
// event broadcasters) to log instead of klog's own stderr format. klog is
// process-wide, so call it once, from main, before any client is built.
//
// klog's verbosity follows level: at debug, client-go's V(2) chatter (watch
// restarts and the like) comes through; otherwise only its V(0) lines do.
func RouteKlog(log *slog.Logger, level slog.Level) {
	v := 0
	if level <= slog.LevelDebug {
		v = 2
	}
	// klog takes its verbosity only through flags; a private FlagSet keeps
	// them off vipd's command line.
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", strconv.Itoa(v))
	klog.SetSlogLogger(log.With("logger", "client-go"))
}
