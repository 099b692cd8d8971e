package controlplane

import (
	"bytes"
	"context"
	"fmt"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/kubernetes"
)

// RequestKey groups API requests the way load is compared: by verb (GET,
// LIST, WATCH, PUT, PATCH, POST, DELETE, APPLY) and resource ("leases").
// Non-resource requests such as /metrics have an empty Resource.
type RequestKey struct {
	Verb     string
	Resource string
}

// RequestCounts are cumulative apiserver_request_total sums since the API
// server started.
type RequestCounts map[RequestKey]float64

// Sub returns the requests made between an earlier snapshot and c; keys
// without growth are left out.
func (c RequestCounts) Sub(earlier RequestCounts) RequestCounts {
	out := RequestCounts{}
	for k, v := range c {
		if d := v - earlier[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// Resource sums the counts of every verb on one resource.
func (c RequestCounts) Resource(resource string) float64 {
	var sum float64
	for k, v := range c {
		if k.Resource == resource {
			sum += v
		}
	}
	return sum
}

// RequestCount scrapes the API server's own /metrics and sums
// apiserver_request_total by verb and resource, over all response codes,
// groups, versions and subresources. The scrape itself is counted too, as a
// GET with no resource.
func (c *ControlPlane) RequestCount(ctx context.Context) (RequestCounts, error) {
	cs, err := kubernetes.NewForConfig(c.Config())
	if err != nil {
		return nil, fmt.Errorf("building client for metrics scrape: %w", err)
	}
	body, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").
		SetHeader("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain))).DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("scraping API server metrics: %w", err)
	}
	return parseRequestCounts(body)
}

func parseRequestCounts(body []byte) (RequestCounts, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parsing API server metrics: %w", err)
	}
	fam, ok := families["apiserver_request_total"]
	if !ok {
		return nil, fmt.Errorf("no apiserver_request_total in API server metrics")
	}
	out := RequestCounts{}
	for _, m := range fam.GetMetric() {
		var key RequestKey
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "verb":
				key.Verb = l.GetValue()
			case "resource":
				key.Resource = l.GetValue()
			}
		}
		out[key] += m.GetCounter().GetValue()
	}
	return out, nil
}
