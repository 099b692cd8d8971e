package election

import (
	"encoding/json"
	"maps"
)

// SetRefused replaces the set of contests this agent cannot hold (an
// address its interface refuses, say), each with the reason. This agent
// stops being a candidate for them at once. It publishes the set on its
// node Lease right away, so the others skip it instead of waiting for it
// to act, and only then releases the ones it holds. Taking a contest off
// the set makes this agent a candidate again; nothing moves back to it.
func (e *Elector) SetRefused(refused map[string]string) {
	e.mu.Lock()
	changed := !maps.Equal(refused, e.refused)
	e.refused = maps.Clone(refused)
	if e.refused == nil {
		e.refused = map[string]string{}
	}
	e.mu.Unlock()
	if changed {
		signal(e.publish)
		signal(e.wake)
	}
}

// Refused returns the contests this agent refuses, with the reasons.
func (e *Elector) Refused() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.refused)
}

// parseRefused reads AnnotationRefused. Something that does not parse
// refuses nothing: a foreign or damaged annotation must not keep a node
// from being a candidate.
func parseRefused(v string) map[string]string {
	if v == "" {
		return nil
	}
	var m map[string]string
	if json.Unmarshal([]byte(v), &m) != nil {
		return nil
	}
	return m
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
