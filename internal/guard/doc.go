// Package guard is a dead-man switch in the kernel for the ARP replies and
// neighbour advertisements of a node's VIPs: the node answers for a VIP
// only while its agent keeps saying, every few tens of milliseconds, that
// it is alive and holds the VIP. When the agent dies, the node falls silent
// for its VIPs within AnswerTimeout (200 ms by default), even though the
// addresses stay on its interface until their lifetime runs out (up to
// ~2 s), so the new holder is the only one answering. An old holder that
// keeps an IPv4 VIP on purpose for existing connections ("preserve") is
// kept silent the same way.
//
// # Tables
//
// Two nftables tables named "vipd", built through netlink (the product
// image has no nft binary):
//
//	table arp vipd                       table ip6 vipd
//	  set guarded, answer (ipv4_addr)      set guarded, answer (ipv6_addr)
//	  set alive (nf_proto)                 set alive (nf_proto)
//	  chain input  (hook input)            chain input  (hook input,  priority raw)
//	    ARP request, target IP               neighbour solicitation, target
//	  chain output (hook output)           chain output (hook output, priority raw)
//	    any ARP packet, sender IP            neighbour advertisement, target
//	                                         neighbour solicitation, source
//
// For each packet kind two rules drop the packet when its address is in
// @guarded and either not in @answer, or the table's one @alive element
// (its own family, as meta nfproto gives it) is missing. That element has
// a timeout of AnswerTimeout and Refresh renews it; guarded and answered
// VIPs carry GuardTimeout (optionally none), renewed once a second. So
// silence is the default once the agent stops renewing, and nothing stays
// in the sets once the VIPs themselves have expired from the interface.
//
// One alive element per table, rather than a short timeout on every
// answered VIP, makes Refresh cost the same for 2 VIPs as for 2,000
// (about 30 µs against 3 ms for 2,000 per-VIP elements), 20 times a second.
//
// The output rules matter as much as the input ones. A host updates its
// cache entry for an IP from any ARP packet naming that IP as sender
// (RFC 826), so a kernel resolving a neighbour from the VIP as source
// address (a preserved connection does) would pull the VIP back to the old
// holder; for IPv6 a solicitation from the VIP does the same to the
// solicited neighbour, and an advertisement would outright.
//
// # What the rules do not see
//
// Gratuitous ARP that vipd sends through a packet socket bypasses the ARP
// hooks, so it leaves whatever the sets say. Unsolicited neighbour
// advertisements go through an ICMPv6 socket and the ip6 output hook: they
// leave only for answered VIPs, which is when vipd sends them.
//
// # Renewing timeouts
//
// On Linux 6.18 adding an element that exists keeps its expiry unless the
// timeout differs from the element's (then both are reset), and deleting
// an element that has just expired fails the whole batch with ENOENT.
// Renewals therefore flush a set and add its members again in one batch:
// nftables commits a batch atomically, so a packet sees the old element or
// the new one, never neither. Flush and add are all it uses, nothing that
// newer kernels added.
//
// # Safety
//
// The tables only ever drop ARP and NDP packets about addresses that vipd
// itself put in the sets; every other packet, and every other table
// (kube-proxy's, a CNI's), is untouched: a packet dropped by any base chain
// is dropped, and one accepted by ours goes on to the others. New replaces
// what an earlier run left, in one batch, and Close deletes the tables. If
// someone deletes them meanwhile (`nft flush ruleset`), the next Set or
// Refresh creates them again.
package guard
