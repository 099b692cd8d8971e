// Package guard is a dead-man switch in the kernel for the ARP replies and
// neighbour advertisements of a node's VIPs: the node answers for a VIP
// only while its agent keeps saying, every few tens of milliseconds, that
// it holds the VIP. When the agent dies, the node falls silent for its VIPs
// within AnswerTimeout (200 ms by default), even though the addresses stay
// on its interface until their lifetime runs out (up to ~2 s), so the new
// holder is the only one answering. An old holder that keeps an IPv4 VIP on
// purpose for existing connections ("preserve") is kept silent the same
// way.
//
// # Tables
//
// Two nftables tables named "vipd", built through netlink (the product
// image has no nft binary):
//
//	table arp vipd                   table ip6 vipd
//	  set guarded, answer (ipv4_addr)  set guarded, answer (ipv6_addr)
//	  chain input  (hook input)        chain input  (hook input,  priority raw)
//	    ARP request, target IP           neighbour solicitation, target
//	  chain output (hook output)       chain output (hook output, priority raw)
//	    any ARP packet, sender IP        neighbour advertisement, target
//	                                     neighbour solicitation, source
//
// Every rule drops the packet when its address is in @guarded and not in
// @answer. Both sets have the timeout flag: an element of answer lives
// AnswerTimeout unless renewed (Refresh), an element of guarded lives
// GuardTimeout (optionally forever). Silence for a VIP is therefore the
// default once the agent stops renewing, and nothing stays in the sets
// once the VIP itself has expired from the interface.
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
// Refresh therefore flushes each set and adds its members again in one
// batch: nftables commits a batch atomically, so a packet sees the old
// element or the new one, never neither. Flush and add are all it uses,
// nothing that newer kernels added.
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
