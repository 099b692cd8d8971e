package election

import "maps"

// AnnotationLacking on a node Lease holds what the agent's node lacks of
// what contests may need (Contest.Needs), as a JSON object from the need to
// the reason, e.g. {"eth1":"interface eth1 is down"}. The others do not
// place a contest on a node that lacks its need.
const AnnotationLacking = "vipd.io/lacking"

// SetLacking replaces what this agent's node lacks of the things contests
// may need, each with the reason. It is SetRefused for a whole kind of
// contest at once: the agent stops being a candidate for every contest
// with such a need, publishes the set on its node Lease right away so that
// the others skip it too, and only then releases the ones it holds. A
// contest created later with that need is never placed here, with no
// further write. Taking a need off the set makes this agent a candidate
// again; nothing moves back to it.
func (e *Elector) SetLacking(lacking map[string]string) { e.replacePublished(&e.lacking, lacking) }

// Lacking returns what this agent's node lacks, with the reasons.
func (e *Elector) Lacking() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.lacking)
}

// ParseLacking reads a node Lease's AnnotationLacking: need → reason.
// Something that does not parse lacks nothing: a damaged annotation must
// not keep a node from being a candidate.
func ParseLacking(v string) map[string]string { return parseRefused(v) }
