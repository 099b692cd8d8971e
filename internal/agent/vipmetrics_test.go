package agent

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/vipd/vipd/internal/heartbeat"
)

func TestAPIResource(t *testing.T) {
	for path, want := range map[string]string{
		"/api/v1/namespaces/web/services/api/status":                   "services/status",
		"/api/v1/namespaces/web/services/api":                          "services",
		"/api/v1/namespaces/web/events":                                "events",
		"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x": "leases",
		"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases":   "leases",
		"/api/v1/namespaces/kube-system":                               "namespaces",
		"/healthz":                                                     "other",
	} {
		if got := apiResource(path); got != want {
			t.Errorf("apiResource(%q) = %q, want %q", path, got, want)
		}
	}
}

type fakeRT struct {
	code int
	err  error
}

func (f fakeRT) RoundTrip(*http.Request) (*http.Response, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &http.Response{StatusCode: f.code}, nil
}

func TestWriteMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newVIPMetrics(reg)
	do := func(rt http.RoundTripper, method, path string) {
		req, _ := http.NewRequest(method, "https://api"+path, nil)
		_, _ = writeMetrics{next: rt, errors: m.apiErrors, seconds: m.apiWrites}.RoundTrip(req)
	}
	lease := "/apis/coordination.k8s.io/v1/namespaces/ns/leases/vipd-node-n1"
	do(fakeRT{code: 200}, http.MethodPut, lease)
	do(fakeRT{code: 409}, http.MethodPut, lease)
	do(fakeRT{code: 409}, http.MethodPut, lease)
	do(fakeRT{err: errors.New("refused")}, http.MethodPost, "/api/v1/namespaces/ns/events")
	do(fakeRT{code: 500}, http.MethodGet, lease) // a read: not counted
	want := `
# HELP vipd_api_write_errors_total Writes to the Kubernetes API that failed, by verb, resource and HTTP status code ("error": no response).
# TYPE vipd_api_write_errors_total counter
vipd_api_write_errors_total{code="409",resource="leases",verb="update"} 2
vipd_api_write_errors_total{code="error",resource="events",verb="create"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "vipd_api_write_errors_total"); err != nil {
		t.Error(err)
	}
	// Every write is timed, failed or not; reads are not.
	if n := testutil.CollectAndCount(m.apiWrites); n != 2 {
		t.Errorf("%d series of vipd_api_write_seconds, want 2 (update leases, create events)", n)
	}
	for labels, want := range map[[2]string]uint64{{"update", "leases"}: 3, {"create", "events"}: 1} {
		h := &dto.Metric{}
		if err := m.apiWrites.WithLabelValues(labels[0], labels[1]).(prometheus.Histogram).Write(h); err != nil {
			t.Fatal(err)
		}
		if got := h.GetHistogram().GetSampleCount(); got != want {
			t.Errorf("vipd_api_write_seconds{verb=%q,resource=%q}: %d writes timed, want %d", labels[0], labels[1], got, want)
		}
	}
}

func TestPeersAnnotation(t *testing.T) {
	v := peersValue(map[string]heartbeat.PeerState{
		"n3": {Ever: true},
		"n2": {Heard: true, Ever: true},
		"n4": {},
	})
	if v != "n2=heard,n3=silent,n4=unheard" {
		t.Fatalf("peersValue = %q", v)
	}
	got := ParsePeers(v)
	if len(got) != 3 || got["n2"] != PeerHeard || got["n3"] != PeerSilent || got["n4"] != PeerUnheard {
		t.Errorf("ParsePeers(%q) = %v", v, got)
	}
	if len(ParsePeers("")) != 0 {
		t.Error("an empty view has peers")
	}
}
