package services

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/util/flowcontrol"

	"github.com/vipd/vipd/internal/kube"
)

// writeLog records the writes a client makes to Services that the API
// server accepts, as "METHOD services NAME" or "METHOD services/status NAME"; with dropHost every status
// write leaves the annotations as they are, as an API server that ignored
// metadata on services/status would.
type writeLog struct {
	next     http.RoundTripper
	dropHost bool
	// refuseHost: a status write that changes vipHost is refused (403), as
	// an admission policy fencing metadata might.
	refuseHost bool
	t          *testing.T

	mu     sync.Mutex
	writes []string
}

func (w *writeLog) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodGet || !strings.Contains(req.URL.Path, "/services/") {
		return w.next.RoundTrip(req)
	}
	what := req.Method + " services"
	if strings.HasSuffix(req.URL.Path, "/status") {
		what += "/status"
		if w.dropHost {
			if err := w.stripHost(req); err != nil {
				return nil, err
			}
		}
		if w.refuseHost {
			if refused, err := w.changesHost(req); err != nil || refused != nil {
				return refused, err
			}
		}
	}
	resp, err := w.next.RoundTrip(req)
	if err != nil || resp.StatusCode >= 300 {
		return resp, err // not written
	}
	w.mu.Lock()
	w.writes = append(w.writes, what+" "+path.Base(strings.TrimSuffix(req.URL.Path, "/status")))
	w.mu.Unlock()
	return resp, nil
}

// stripHost makes the annotations in req's body (a JSON Service) those the
// API server has: the status write changes none of them.
func (w *writeLog) stripHost(req *http.Request) error {
	if ct := req.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("status write in %q, the test only rewrites JSON", ct)
	}
	stored, err := w.storedAnnotations(req)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return err
	}
	var obj map[string]any
	if err := json.Unmarshal(body, &obj); err != nil {
		return err
	}
	meta, _ := obj["metadata"].(map[string]any)
	if meta == nil {
		return fmt.Errorf("status write without metadata: %s", body)
	}
	meta["annotations"] = stored
	if body, err = json.Marshal(obj); err != nil {
		return err
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	return nil
}

// changesHost returns a 403 response if req, a JSON status write, changes
// vipHost; nil if it does not.
func (w *writeLog) changesHost(req *http.Request) (*http.Response, error) {
	stored, err := w.storedAnnotations(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return nil, err
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	var svc struct {
		Metadata struct {
			Annotations map[string]any `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(body, &svc); err != nil {
		return nil, err
	}
	was, _ := stored.(map[string]any)
	if svc.Metadata.Annotations[AnnotationVIPHost] == was[AnnotationVIPHost] {
		return nil, nil
	}
	status := `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,` +
		`"message":"services/status may not change annotations (test policy)"}`
	return &http.Response{
		StatusCode: http.StatusForbidden, Status: "403 Forbidden", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"Content-Type": []string{"application/json"}},
		Body:    io.NopCloser(strings.NewReader(status)),
		Request: req,
	}, nil
}

// storedAnnotations reads the annotations of the Service whose status req
// writes.
func (w *writeLog) storedAnnotations(req *http.Request) (any, error) {
	u := *req.URL
	u.Path = strings.TrimSuffix(u.Path, "/status")
	u.RawQuery = ""
	get, err := http.NewRequestWithContext(req.Context(), http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	get.Header.Set("Accept", "application/json")
	resp, err := w.next.RoundTrip(get)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var svc struct {
		Metadata struct {
			Annotations map[string]any `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&svc); err != nil {
		return nil, fmt.Errorf("reading %s: %s: %w", u.Path, resp.Status, err)
	}
	return svc.Metadata.Annotations, nil
}

// take returns the writes recorded so far and forgets them.
func (w *writeLog) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.writes
	w.writes = nil
	return out
}

// waitRecorded waits until w has recorded the write what. The API server
// shows a write to a reader before the writer's transport has its
// response: the Service's new state alone does not say the log is whole.
func (w *writeLog) waitRecorded(what string) {
	w.t.Helper()
	waitFor(w.t, "the write "+what+" recorded", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return slices.Contains(w.writes, what)
	})
}

// loggedClient is a client whose Service writes w records.
func loggedClient(t *testing.T, w *writeLog) kube.Interface {
	t.Helper()
	rc := suite.Need(t).Config()
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	rc.ContentType = "application/json" // for stripHost and changesHost
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { w.next = rt; return w })
	c, err := kube.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startWith runs a Controller for node with client until the test ends.
func startWith(t *testing.T, node string, client kube.Interface, cfg Config) *Controller {
	t.Helper()
	cfg.Client = client
	cfg.NodeName = node
	cfg.Class = "kube-vip.io/kube-vip-class"
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return run(t, cfg)
}

// TestTakeIsOneWrite: a node that takes an address writes the Service's
// status and its vipHost in one request to services/status, and the API
// server keeps both.
func TestTakeIsOneWrite(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-onewrite")
	w := &writeLog{t: t}
	c := startWith(t, "n1", loggedClient(t, w), Config{Namespace: ns})
	create(t, client, ns, "web", ann("192.0.2.61"))
	waitFor(t, "n1's controller to see web", func() bool { return len(c.Addresses()) == 1 })
	w.take()

	c.SetHeld([]Held{{IP: netip.MustParseAddr("192.0.2.61"), Reason: "new"}})
	waitFor(t, "ingress 192.0.2.61 (VIP) and vipHost n1", func() bool {
		s := get(t, client, ns, "web")
		return ingressIs(s, "192.0.2.61") && s.Annotations[AnnotationVIPHost] == "n1"
	})
	w.waitRecorded("PUT services/status web")
	if got, want := w.take(), []string{"PUT services/status web"}; !equalStrings(got, want) {
		t.Errorf("writes to take the address: %q, want %q", got, want)
	}
	if !c.hostByStatus.Load() {
		t.Error("the controller stopped writing vipHost with the status")
	}
}

// TestTakeWhenStatusDropsHost: against an API server that ignores metadata
// written through services/status, vipHost still names the holder: the
// controller notices that the annotation did not land, patches it, and
// from then on patches it on its own before writing the status.
func TestTakeWhenStatusDropsHost(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-drophost")
	w := &writeLog{t: t, dropHost: true}
	c := startWith(t, "n1", loggedClient(t, w), Config{Namespace: ns})
	create(t, client, ns, "web", ann("192.0.2.62"))
	create(t, client, ns, "db", ann("192.0.2.63"))
	waitFor(t, "n1's controller to see both Services", func() bool { return len(c.Addresses()) == 2 })
	w.take()

	c.SetHeld([]Held{{IP: netip.MustParseAddr("192.0.2.62"), Reason: "new"}})
	waitFor(t, "web: ingress 192.0.2.62 (VIP) and vipHost n1", func() bool {
		s := get(t, client, ns, "web")
		return ingressIs(s, "192.0.2.62") && s.Annotations[AnnotationVIPHost] == "n1"
	})
	w.waitRecorded("PATCH services web")
	if c.hostByStatus.Load() {
		t.Error("the controller still writes vipHost with the status, which drops it")
	}
	// A sync that reads a cache not yet up to date may repeat a write; the
	// order is what tells how vipHost was written.
	if got := w.take(); len(got) < 2 || got[0] != "PUT services/status web" || !slices.Contains(got, "PATCH services web") {
		t.Errorf("writes to take web: %q, want the status, then a patch", got)
	}
	c.SetHeld([]Held{{IP: netip.MustParseAddr("192.0.2.62"), Reason: "new"}, {IP: netip.MustParseAddr("192.0.2.63"), Reason: "new"}})
	waitFor(t, "db: ingress 192.0.2.63 (VIP) and vipHost n1", func() bool {
		s := get(t, client, ns, "db")
		return ingressIs(s, "192.0.2.63") && s.Annotations[AnnotationVIPHost] == "n1"
	})
	w.waitRecorded("PUT services/status db")
	if got := writesTo(w.take(), "db"); len(got) < 2 || got[0] != "PATCH services db" || !slices.Contains(got, "PUT services/status db") {
		t.Errorf("writes to take db: %q, want a patch, then the status", got)
	}
}

// TestTakeWhenStatusHostRefused: where an admission policy refuses status
// writes that change annotations, the take still lands: the refused write is
// retried with vipHost patched on its own, and later takes do the same.
func TestTakeWhenStatusHostRefused(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-refusehost")
	w := &writeLog{t: t, refuseHost: true}
	c := startWith(t, "n1", loggedClient(t, w), Config{Namespace: ns})
	create(t, client, ns, "web", ann("192.0.2.64"))
	waitFor(t, "n1's controller to see web", func() bool { return len(c.Addresses()) == 1 })

	c.SetHeld([]Held{{IP: netip.MustParseAddr("192.0.2.64"), Reason: "new"}})
	waitFor(t, "web: ingress 192.0.2.64 (VIP) and vipHost n1", func() bool {
		s := get(t, client, ns, "web")
		return ingressIs(s, "192.0.2.64") && s.Annotations[AnnotationVIPHost] == "n1"
	})
	w.waitRecorded("PUT services/status web")
	if c.hostByStatus.Load() {
		t.Error("the controller still writes vipHost with the status, which is refused")
	}
	if got := writesTo(w.take(), "web"); len(got) < 2 || got[0] != "PATCH services web" || !slices.Contains(got, "PUT services/status web") {
		t.Errorf("writes that landed to take web: %q, want a patch, then the status", got)
	}
}

// writesTo keeps of writes those to the Service named name.
func writesTo(writes []string, name string) []string {
	return slices.DeleteFunc(writes, func(w string) bool { return !strings.HasSuffix(w, " "+name) })
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}
