package election

import (
	"encoding/json"
	"maps"

	"github.com/vipd/vipd/internal/notify"
)

// SetRefused replaces the set of contests this agent cannot hold (an
// address its interface refuses, say), each with the reason. This agent
// stops being a candidate for them at once. It publishes the set on its
// node Lease right away, so the others skip it instead of waiting for it
// to act, and only then releases the ones it holds. Taking a contest off
// the set makes this agent a candidate again; nothing moves back to it.
func (e *Elector) SetRefused(refused map[string]string) { e.replacePublished(&e.refused, refused) }

// Refused returns the contests this agent refuses, with the reasons.
func (e *Elector) Refused() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.refused)
}

// replacePublished sets *field, a set this agent publishes on its node
// Lease, to a copy of m; a change is published at once and evaluated.
func (e *Elector) replacePublished(field *map[string]string, m map[string]string) {
	e.mu.Lock()
	changed := !maps.Equal(m, *field)
	*field = maps.Clone(m)
	if *field == nil {
		*field = map[string]string{}
	}
	e.mu.Unlock()
	if changed {
		notify.Signal(e.publish)
		notify.Signal(e.wake)
	}
}

// parseRefused reads AnnotationRefused. Something that does not parse
// refuses nothing: a foreign or damaged annotation must not keep a node
// from being a candidate.
func parseRefused(v string) map[string]string {
	m, _ := parseRefusedErr(v)
	return m
}

func parseRefusedErr(v string) (map[string]string, error) {
	if v == "" {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		return nil, err
	}
	return m, nil
}

// refusedOfLocked reads the refusals another agent published, and says
// once per value when they do not parse.
func (e *Elector) refusedOfLocked(o *observed) map[string]string {
	v := o.lease.Annotations[AnnotationRefused]
	m, err := parseRefusedErr(v)
	if err != nil && e.badAnnotations[o.lease.Name] != v {
		e.log.Warn("ignoring a node Lease annotation that does not parse: that agent counts as refusing nothing",
			"lease", o.lease.Name, "annotation", AnnotationRefused, "value", truncate(v, 200), "err", err)
	}
	if err != nil {
		e.badAnnotations[o.lease.Name] = v
	} else {
		delete(e.badAnnotations, o.lease.Name)
	}
	return m
}

// truncate shortens s for a log line.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func formatRefused(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	b, err := json.Marshal(m) // sorted keys: the same set always reads the same
	if err != nil {
		return ""
	}
	return string(b)
}
