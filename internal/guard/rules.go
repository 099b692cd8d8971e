package guard

import (
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The ARP family's hooks (linux/netfilter_arp.h); x/sys/unix does not name
// them, and their numbers differ from the IP families' input and output.
const (
	nfARPIn  = 0
	nfARPOut = 1
)

// Offsets in an Ethernet/IPv4 ARP packet (RFC 826) and in ICMPv6 neighbour
// discovery messages (RFC 4861).
const (
	arpPtypeOffset  = 2  // protocol type (2), hardware length (1), protocol length (1)
	arpOpOffset     = 6  // operation (2)
	arpSenderIP     = 14 // sender protocol address (4)
	arpTargetIP     = 24 // target protocol address (4)
	icmp6TypeOffset = 0  // ICMPv6 type (1)
	ndTargetOffset  = 8  // target address of a solicitation or advertisement (16)
	ip6SrcOffset    = 8  // source address in the IPv6 header (16)

	icmp6Proto   = 58  // IPPROTO_ICMPV6
	ndSolicit    = 135 // neighbour solicitation
	ndAdvertise  = 136 // neighbour advertisement
	arpRequestOp = 1
)

// family is the table of one address family: ARP for IPv4 VIPs, ip6 for
// IPv6 VIPs, each with its three sets.
type family struct {
	what    string // for messages: "IPv4 (ARP)" or "IPv6 (NDP)"
	ipv4    bool
	table   *nftables.Table
	guarded *nftables.Set
	answer  *nftables.Set
	alive   *nftables.Set
	// steps build the table in order. Each names what the kernel must
	// support for it, so that a refusal can be narrowed to one of them.
	steps []step
}

type step struct {
	needs string
	add   func(c *nftables.Conn, f *family) error
}

func newFamilies(table string) []*family {
	return []*family{newARP(table), newIP6(table)}
}

func newARP(name string) *family {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyARP}
	f := &family{what: "IPv4 (ARP)", ipv4: true, table: t}
	newSets(f, nftables.TypeIPAddr)
	// Only Ethernet-style ARP for IPv4 (6-byte hardware, 4-byte protocol
	// addresses) has the addresses at the offsets below.
	ipv4ARP := match(expr.PayloadBaseNetworkHeader, arpPtypeOffset, []byte{0x08, 0x00, 6, 4})
	f.steps = []step{
		{"nftables (CONFIG_NF_TABLES)", addTable},
		{"ARP family base chains (CONFIG_NF_TABLES_ARP)", func(c *nftables.Conn, f *family) error {
			addChains(c, f, nfARPIn, nfARPOut, *nftables.ChainPriorityFilter)
			return nil
		}},
		{"sets with per-element timeouts", addSets},
		{"rules with payload matches and set lookups", func(c *nftables.Conn, f *family) error {
			in, out := chains(f)
			// A request for a VIP this node may not answer for never
			// reaches the kernel's ARP code, so no reply is made.
			addDrops(c, f, in, "vipd: no ARP replies for VIPs not answered here",
				concat(ipv4ARP, match(expr.PayloadBaseNetworkHeader, arpOpOffset, []byte{0, arpRequestOp})),
				load(expr.PayloadBaseNetworkHeader, arpTargetIP, 4))
			// Any ARP packet naming the VIP as sender makes every host
			// that caches the VIP point it here (RFC 826's merge rule):
			// also the kernel's own requests from the VIP as source.
			addDrops(c, f, out, "vipd: no ARP from VIPs not answered here",
				ipv4ARP, load(expr.PayloadBaseNetworkHeader, arpSenderIP, 4))
			return nil
		}},
	}
	return f
}

func newIP6(name string) *family {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyIPv6}
	f := &family{what: "IPv6 (NDP)", table: t}
	newSets(f, nftables.TypeIP6Addr)
	icmp6Type := func(typ byte) []expr.Any {
		return concat([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{icmp6Proto}},
		}, match(expr.PayloadBaseTransportHeader, icmp6TypeOffset, []byte{typ}))
	}
	f.steps = []step{
		{"nftables (CONFIG_NF_TABLES)", addTable},
		{"IPv6 family base chains (CONFIG_NF_TABLES_IPV6)", func(c *nftables.Conn, f *family) error {
			// Before conntrack and everything else: the packets are dropped anyway.
			addChains(c, f, unix.NF_INET_LOCAL_IN, unix.NF_INET_LOCAL_OUT, *nftables.ChainPriorityRaw)
			return nil
		}},
		{"sets with per-element timeouts", addSets},
		{"rules with meta, payload matches and set lookups", func(c *nftables.Conn, f *family) error {
			in, out := chains(f)
			addDrops(c, f, in, "vipd: no NDP answers for VIPs not answered here",
				icmp6Type(ndSolicit), load(expr.PayloadBaseTransportHeader, ndTargetOffset, 16))
			// The kernel's advertisements, and vipd's own unsolicited ones,
			// leave only for VIPs answered here.
			addDrops(c, f, out, "vipd: no neighbour advertisements for VIPs not answered here",
				icmp6Type(ndAdvertise), load(expr.PayloadBaseTransportHeader, ndTargetOffset, 16))
			// A solicitation from the VIP carries this node's MAC, which
			// the solicited neighbour then caches for the VIP.
			addDrops(c, f, out, "vipd: no neighbour solicitations from VIPs not answered here",
				icmp6Type(ndSolicit), load(expr.PayloadBaseNetworkHeader, ip6SrcOffset, 16))
			return nil
		}},
	}
	return f
}

func newSets(f *family, key nftables.SetDatatype) {
	f.guarded = &nftables.Set{Table: f.table, Name: "guarded", KeyType: key, HasTimeout: true,
		Comment: "VIPs vipd put on this node"}
	f.answer = &nftables.Set{Table: f.table, Name: "answer", KeyType: key, HasTimeout: true,
		Comment: "VIPs this node holds and answers for while vipd is alive"}
	// Keyed by the table's own family (meta nfproto): a constant that nft
	// can show, unlike an immediate value.
	f.alive = &nftables.Set{Table: f.table, Name: "alive", KeyType: nftables.TypeNFProto, HasTimeout: true,
		Comment: "present while the vipd agent renews it; without it no VIP is answered"}
}

func addTable(c *nftables.Conn, f *family) error {
	c.AddTable(f.table)
	return nil
}

func addSets(c *nftables.Conn, f *family) error {
	for _, s := range []*nftables.Set{f.guarded, f.answer, f.alive} {
		// A fresh ID: a set is referred to by ID within the batch that
		// creates it, and every batch that builds the table creates them.
		s.ID = 0
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	return nil
}

func addChains(c *nftables.Conn, f *family, in, out nftables.ChainHook, prio nftables.ChainPriority) {
	for _, ch := range []struct {
		name string
		hook nftables.ChainHook
	}{{"input", in}, {"output", out}} {
		c.AddChain(&nftables.Chain{
			Name:     ch.name,
			Table:    f.table,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  nftables.ChainHookRef(ch.hook),
			Priority: nftables.ChainPriorityRef(prio),
			Policy:   ref(nftables.ChainPolicyAccept),
		})
	}
}

func chains(f *family) (in, out *nftables.Chain) {
	return &nftables.Chain{Name: "input", Table: f.table}, &nftables.Chain{Name: "output", Table: f.table}
}

// addDrops adds the two rules that drop a packet passing match whose
// address (put in register 1 by load) is guarded, when that address is not
// answered or when the agent is not alive. The second rule is what makes
// renewal cheap: Refresh renews one element, not one per VIP.
func addDrops(c *nftables.Conn, f *family, ch *nftables.Chain, comment string, match, load []expr.Any) {
	guarded := concat(match, load, []expr.Any{
		&expr.Lookup{SourceRegister: 1, SetName: f.guarded.Name, SetID: f.guarded.ID},
	})
	drop := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
	for _, cond := range [][]expr.Any{
		{&expr.Lookup{SourceRegister: 1, SetName: f.answer.Name, SetID: f.answer.ID, Invert: true}},
		{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: f.alive.Name, SetID: f.alive.ID, Invert: true},
		},
	} {
		c.AddRule(&nftables.Rule{
			Table:    ch.Table,
			Chain:    ch,
			Exprs:    concat(guarded, cond, drop),
			UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
		})
	}
}

// match compares len(value) bytes at offset of base with value.
func match(base expr.PayloadBase, offset uint32, value []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: base, Offset: offset, Len: uint32(len(value))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: value},
	}
}

// load puts size bytes at offset of base in register 1.
func load(base expr.PayloadBase, offset, size uint32) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: base, Offset: offset, Len: size}}
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// aliveElement is the one element of f's alive set: the table's family, as
// meta nfproto gives it.
func aliveElement(f *family, timeout time.Duration) nftables.SetElement {
	return nftables.SetElement{Key: []byte{byte(f.table.Family)}, Timeout: timeout}
}

// elements are the set elements for addrs, each with timeout (zero: none).
func elements(addrs []netip.Addr, timeout time.Duration) []nftables.SetElement {
	out := make([]nftables.SetElement, len(addrs))
	for i, a := range addrs {
		out[i] = nftables.SetElement{Key: a.AsSlice(), Timeout: timeout}
	}
	return out
}

func ref[T any](v T) *T { return &v }
