package agent

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/vipd/vipd/internal/nodes"
)

// placer narrows each binding's candidates to the nodes whose labels allow
// it: the global node selector for every VIP; for Service VIPs also the
// exclusion of control-plane nodes and their pool's node selector. Every
// agent computes the same candidates from the same Nodes.
type placer struct {
	node string
	// global is --node-selector; nil for none.
	global labels.Selector
	// excludeCP keeps Service VIPs off control-plane nodes.
	excludeCP bool
	log       *slog.Logger

	// unfit is, per selector this node fails, what it is, as last logged.
	unfit map[string]string
	// noNode: this node's Node object was missing when last looked.
	noNode bool
}

func newPlacer(node, global string, excludeCP bool, log *slog.Logger) (*placer, error) {
	p := &placer{node: node, excludeCP: excludeCP, log: log}
	if global != "" {
		sel, err := labels.Parse(global)
		if err != nil {
			return nil, fmt.Errorf("node selector %q: %w", global, err)
		}
		p.global = sel
	}
	return p, nil
}

// notControlPlane matches the nodes without the control-plane role label.
func notControlPlane() labels.Requirement {
	r, err := labels.NewRequirement(nodes.LabelControlPlane, selection.DoesNotExist, nil)
	if err != nil {
		panic(err) // a constant, valid key
	}
	return *r
}

// selectorFor is the selector on Nodes that b's holder must match, with
// the names of its parts for logs; nil when any node may hold it.
func (p *placer) selectorFor(b binding) (labels.Selector, []string, error) {
	sel := labels.NewSelector()
	var parts []string
	if p.global != nil {
		reqs, _ := p.global.Requirements()
		sel = sel.Add(reqs...)
		parts = append(parts, "--node-selector "+p.global.String())
	}
	// A Service address that is a control-plane VIP rides on the
	// control-plane election, where Services' rules do not apply.
	if !b.controlPlane {
		if p.excludeCP {
			sel = sel.Add(notControlPlane())
			parts = append(parts, "--service-exclude-control-plane")
		}
		if b.selector != "" {
			pool, err := labels.Parse(b.selector)
			if err != nil {
				return nil, nil, fmt.Errorf("node selector %q of pool %s: %w", b.selector, b.pool, err)
			}
			reqs, _ := pool.Requirements()
			sel = sel.Add(reqs...)
			parts = append(parts, "pool "+b.pool+" node selector "+b.selector)
		}
	}
	if len(parts) == 0 {
		return nil, nil, nil
	}
	return sel, parts, nil
}

// needsNodes reports whether any binding's candidates depend on Node labels.
func (p *placer) needsNodes(bs []binding) bool {
	for _, b := range bs {
		if sel, _, err := p.selectorFor(b); sel != nil || err != nil {
			return true
		}
	}
	return false
}

// nodeLabels is what placer reads of the Nodes (nodes.Watcher).
type nodeLabels interface {
	Matching(sel labels.Selector) []string
	Labels(node string) (labels.Set, bool)
}

// apply sets each binding's candidates: its own (externalTrafficPolicy
// Local) narrowed to the nodes its selector matches. A selector that does
// not parse matches no node. nw must have synced if needsNodes; it may be
// nil otherwise.
func (p *placer) apply(bs []binding, nw nodeLabels) {
	unfit := map[string]string{}
	checked := false
	for i := range bs {
		b := &bs[i]
		sel, parts, err := p.selectorFor(*b)
		if err != nil {
			p.log.Error("no node may hold these VIPs", "election", b.contest, "err", err)
			b.candidates = []string{}
			continue
		}
		if sel == nil {
			continue
		}
		matching := nw.Matching(sel)
		b.candidates = narrow(b.candidates, matching)
		if !slices.Contains(matching, p.node) {
			unfit[sel.String()] = strings.Join(parts, " and ")
		}
		checked = true
	}
	if !checked {
		return
	}
	if _, exists := nw.Labels(p.node); !exists != p.noNode {
		p.noNode = !exists
		if p.noNode {
			p.log.Warn("there is no Node named like this agent (--node-name), so it holds no VIP that a node selector or --service-exclude-control-plane applies to", "node", p.node)
		}
	}
	if !maps.Equal(unfit, p.unfit) {
		for s, what := range unfit {
			if _, was := p.unfit[s]; !was {
				p.log.Info("this node's labels keep it from holding some VIPs", "selector", what)
			}
		}
		for s, what := range p.unfit {
			if _, is := unfit[s]; !is {
				p.log.Info("this node's labels allow it to hold VIPs again", "selector", what)
			}
		}
		p.unfit = unfit
	}
}

// narrow keeps the candidates (nil: any node) that are in allowed; the
// result is sorted and not nil.
func narrow(candidates, allowed []string) []string {
	if candidates == nil {
		return slices.Clone(allowed)
	}
	out := []string{}
	for _, n := range candidates {
		if slices.Contains(allowed, n) {
			out = append(out, n)
		}
	}
	return out
}
