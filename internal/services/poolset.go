package services

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/vipd/vipd/internal/address"
)

// Keys of the pool ConfigMap besides kube-vip's cidr-<ns> and range-<ns>:
//
//	pool-<name>                 addresses: CIDRs, first-last ranges, single addresses
//	pool-<name>.node-selector   only nodes matching this label selector hold them
//	pool-<name>.interface       the interface they go on
//	pool-<name>.namespaces      the namespaces it is the default pool of, and
//	                            the only ones that may name it ("*": all)
//	interface-<ns>, interface-global   kube-vip's: the interface of the
//	                            addresses from cidr-/range- keys
const (
	keyPool           = "pool-"
	keyInterface      = "interface-"
	attrNodeSelector  = ".node-selector"
	attrInterface     = ".interface"
	attrNamespaces    = ".namespaces"
	scopeGlobal       = "global"
	allNamespaces     = "*"
	reasonUnknownPool = "UnknownAddressPool"
	reasonNotInPool   = "AddressNotInPool"
)

// unsupportedPoolKeys are kube-vip cloud-provider keys vipd does not act on,
// by prefix, with what vipd does instead.
var unsupportedPoolKeys = map[string]string{
	"allow-share-":         "Services share an address when they name the same one (or carry the same metallb.io/allow-shared-ip key); vipd's pool never hands out a used address otherwise",
	"search-order":         "vipd always hands out the first free address, in the order the pool lists them",
	"skip-end-ips-in-cidr": "vipd never hands out a CIDR's network and broadcast addresses anyway (see docs/services.md)",
}

// addrPool is one pool of addresses and where its VIPs may live.
type addrPool struct {
	// name is the named pool's; "" for kube-vip's keys.
	name string
	// keys are the ConfigMap keys it was read from, for messages.
	keys   []string
	ranges []ipRange
	// iface is the interface its VIPs go on; "" for the agent's default.
	iface string
	// selector is a canonical label selector on Nodes; "" for every node.
	selector string
	// namespaces: see attrNamespaces; nil means any namespace may name the
	// pool and it is nobody's default.
	namespaces []string
	// err says why the pool cannot be used.
	err error
}

// describe names the pool in messages.
func (p *addrPool) describe() string {
	if p.name != "" {
		return "pool " + p.name
	}
	return strings.Join(p.keys, ", ")
}

func (p *addrPool) contains(a netip.Addr) bool {
	for _, r := range p.ranges {
		if r.first.Is4() == a.Is4() && !a.Less(r.first) && !r.last.Less(a) {
			return true
		}
	}
	return false
}

// namedBy reports whether a Service in namespace ns may use the pool.
func (p *addrPool) namedBy(ns string) bool {
	return p.namespaces == nil || slices.Contains(p.namespaces, ns) || slices.Contains(p.namespaces, allNamespaces)
}

// poolSet is the pool ConfigMap as vipd reads it.
type poolSet struct {
	src   pool
	named map[string]*addrPool
	// order is the named pools' names, sorted: the order in which they are
	// tried and looked through.
	order []string
	// problems are about keys vipd cannot use, for the log.
	problems []string
}

// readPools reads the named pools and checks every key of the ConfigMap.
func readPools(p pool) poolSet {
	ps := poolSet{src: p, named: map[string]*addrPool{}}
	attrs := map[string]map[string]string{} // pool name → attribute → value
	for _, key := range slices.Sorted(maps.Keys(p.data)) {
		rest, ok := strings.CutPrefix(key, keyPool)
		if !ok {
			ps.checkOtherKey(key)
			continue
		}
		name, attr := rest, ""
		for _, a := range []string{attrNodeSelector, attrInterface, attrNamespaces} {
			if n, ok := strings.CutSuffix(rest, a); ok {
				name, attr = n, a
			}
		}
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			ps.problems = append(ps.problems, fmt.Sprintf("key %s ignored: %q is not a pool name (%s)", key, name, strings.Join(errs, "; ")))
			continue
		}
		if attrs[name] == nil {
			attrs[name] = map[string]string{}
		}
		attrs[name][attr] = strings.TrimSpace(p.data[key])
	}
	ps.order = slices.Sorted(maps.Keys(attrs))
	for _, name := range ps.order {
		pl := readNamedPool(p.name, name, attrs[name])
		ps.named[name] = pl
		if pl.err != nil {
			ps.problems = append(ps.problems, pl.err.Error())
		}
	}
	return ps
}

// checkOtherKey notes a key that is neither kube-vip's pool keys nor vipd's.
func (ps *poolSet) checkOtherKey(key string) {
	for _, prefix := range []string{"cidr-", "range-", keyInterface} {
		if strings.HasPrefix(key, prefix) {
			return
		}
	}
	for prefix, instead := range unsupportedPoolKeys {
		if strings.HasPrefix(key, prefix) {
			ps.problems = append(ps.problems, fmt.Sprintf("key %s is kube-vip's and not supported: %s", key, instead))
			return
		}
	}
	ps.problems = append(ps.problems, fmt.Sprintf("key %s ignored: not a pool key (cidr-<namespace>, range-<namespace>, interface-<namespace>, pool-<name>[%s|%s|%s])",
		key, attrNodeSelector, attrInterface, attrNamespaces))
}

// readNamedPool reads one named pool from its keys.
func readNamedPool(cm, name string, attrs map[string]string) *addrPool {
	key := keyPool + name
	pl := &addrPool{name: name, keys: []string{key}}
	fail := func(k, format string, args ...any) *addrPool {
		pl.err = fmt.Errorf("ConfigMap %s key %s: %s", cm, k, fmt.Sprintf(format, args...))
		return pl
	}
	raw, ok := attrs[""]
	if !ok {
		return fail(key, "missing: pool %s has settings but no addresses", name)
	}
	for _, entry := range strings.Split(raw, ",") {
		r, err := parseEntry(strings.TrimSpace(entry))
		if err != nil {
			return fail(key, "%v", err)
		}
		pl.ranges = append(pl.ranges, r)
	}
	if v := attrs[attrNodeSelector]; v != "" {
		sel, err := labels.Parse(v)
		if err != nil {
			return fail(key+attrNodeSelector, "%q is not a label selector: %v", v, err)
		}
		if !sel.Empty() {
			pl.selector = sel.String()
		}
	}
	if v := attrs[attrInterface]; v != "" {
		if problem := interfaceProblem(v); problem != "" {
			return fail(key+attrInterface, "%q: %s", v, problem)
		}
		pl.iface = v
	}
	if v, ok := attrs[attrNamespaces]; ok {
		pl.namespaces = []string{}
		for _, ns := range strings.Split(v, ",") {
			ns = strings.TrimSpace(ns)
			if ns == "" {
				continue
			}
			if errs := validation.IsDNS1123Label(ns); ns != allNamespaces && len(errs) > 0 {
				return fail(key+attrNamespaces, "%q is not a namespace", ns)
			}
			pl.namespaces = append(pl.namespaces, ns)
		}
		slices.Sort(pl.namespaces)
	}
	return pl
}

// parseEntry reads one entry of a named pool: a CIDR, a range or an address.
func parseEntry(s string) (ipRange, error) {
	switch {
	case strings.Contains(s, "/"):
		return parseCIDR(s)
	case strings.Contains(s, "-"):
		return parseRange(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return ipRange{}, fmt.Errorf("%q is not a CIDR, range or address (e.g. 192.0.2.0/28, 192.0.2.10-192.0.2.20, 192.0.2.7)", s)
	}
	if problem := address.VIPProblem(a); problem != "" {
		return ipRange{}, fmt.Errorf("%s is %s", a, problem)
	}
	return ipRange{first: a, last: a}, nil
}

// kubeVIP is the pool of kube-vip's keys for a scope (a namespace, or
// "global"), used by Services of namespace ns: nil when the scope has no
// cidr- or range- key. Its interface is interface-<ns>, else
// interface-global, as kube-vip's cloud provider does.
func (ps poolSet) kubeVIP(scope, ns string) *addrPool {
	rs, keys, err := ps.src.rangesIn(scope)
	if len(keys) == 0 {
		return nil
	}
	pl := &addrPool{keys: keys, ranges: rs, err: err}
	for _, s := range []string{ns, scopeGlobal} {
		k := keyInterface + s
		if v := strings.TrimSpace(ps.src.data[k]); v != "" {
			if problem := interfaceProblem(v); problem != "" && pl.err == nil {
				pl.err = fmt.Errorf("ConfigMap %s key %s: %q: %s", ps.src.name, k, v, problem)
			}
			pl.iface = v
			pl.keys = append(pl.keys, k)
			break
		}
	}
	return pl
}

// defaults are the pools a Service of namespace ns gets an address from
// when it names none, in order: the namespace's own (cidr-<ns>, range-<ns>,
// then the named pools that list it), else the global ones (cidr-global,
// range-global, then the named pools that list "*").
func (ps poolSet) defaults(ns string) []*addrPool {
	for _, scope := range []string{ns, scopeGlobal} {
		var out []*addrPool
		if kv := ps.kubeVIP(scope, ns); kv != nil {
			out = append(out, kv)
		}
		want := ns
		if scope == scopeGlobal {
			want = allNamespaces
		}
		for _, name := range ps.order {
			if pl := ps.named[name]; slices.Contains(pl.namespaces, want) {
				out = append(out, pl)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// placement is the pool whose settings an address of a Service in
// namespace ns takes: the first named pool, by name, that holds it and
// that the namespace may use; else the namespace's kube-vip keys, else the
// global ones, if they hold it; else none.
func (ps poolSet) placement(ns string, a netip.Addr) *addrPool {
	for _, name := range ps.order {
		if pl := ps.named[name]; pl.err == nil && pl.namedBy(ns) && pl.contains(a) {
			return pl
		}
	}
	for _, scope := range []string{ns, scopeGlobal} {
		if kv := ps.kubeVIP(scope, ns); kv != nil && kv.err == nil && kv.contains(a) {
			return kv
		}
	}
	return nil
}

// named looks up the pool a Service names, or says why it cannot use it.
func (ps poolSet) lookup(name, ns string) (*addrPool, *warning) {
	pl := ps.named[name]
	switch {
	case ps.src.data == nil:
		return nil, &warning{reasonUnknownPool, fmt.Sprintf("no address: the Service names pool %q, but ConfigMap %s does not exist", name, ps.src.name)}
	case pl == nil:
		return nil, &warning{reasonUnknownPool, fmt.Sprintf("no address: the Service names pool %q, but ConfigMap %s has no key %s%s", name, ps.src.name, keyPool, name)}
	case pl.err != nil:
		return nil, &warning{reasonInvalidPool, fmt.Sprintf("no address: %v", pl.err)}
	case !pl.namedBy(ns):
		return nil, &warning{reasonUnknownPool, fmt.Sprintf("no address: pool %s serves only namespaces %s (%s%s%s)",
			name, strings.Join(pl.namespaces, ", "), keyPool, name, attrNamespaces)}
	}
	return pl, nil
}
