package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

func TestJSONLineCarriesFields(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, FormatJSON, slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	log.With("node", "n1").Info("took VIP", "vip", "192.0.2.10", "reason", "holder-silent")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("not one JSON object: %v: %s", err, buf.Bytes())
	}
	for k, want := range map[string]string{"msg": "took VIP", "node": "n1", "vip": "192.0.2.10", "reason": "holder-silent", "level": "INFO"} {
		if line[k] != want {
			t.Errorf("%s = %v, want %q", k, line[k], want)
		}
	}
}

func TestUnknownFormatRefused(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, "logfmt", slog.LevelInfo); err == nil || !strings.Contains(err.Error(), "logfmt") {
		t.Fatalf("err = %v, want one naming the format", err)
	}
}

// klog is process-wide: this is the only test that routes it.
func TestKlogReachesTheSameHandler(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, FormatJSON, slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	RouteKlog(log.With("node", "n1"), slog.LevelInfo)
	t.Cleanup(func() { klog.ClearLogger() })

	klog.ErrorS(errors.New("connection refused"), "Failed to watch", "reflector", "leases")
	klog.V(2).InfoS("too chatty for info")
	klog.Flush()

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one line (V(2) is below info), got %d: %q", len(lines), lines)
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &line); err != nil {
		t.Fatalf("klog line is not JSON: %v: %s", err, lines[0])
	}
	for k, want := range map[string]string{"msg": "Failed to watch", "node": "n1", "logger": "client-go",
		"reflector": "leases", "err": "connection refused", "level": "ERROR"} {
		if line[k] != want {
			t.Errorf("%s = %v, want %q (line %s)", k, line[k], want, lines[0])
		}
	}
}
