package conflict

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The readers would otherwise wake for every ARP packet and neighbour
// advertisement on the segment: at 1,000 VIPs every node's announcements
// add up to hundreds a second, nearly all about addresses this node
// neither holds nor probes, and each wake-up costs the agent more than
// the packet. A classic BPF program on each socket lets through only the
// packets about the addresses watched (held or being probed); everything
// else is dropped in the kernel, a flood on the segment included.

// Offsets in what a Datagram packet socket reads (no link-layer header).
const (
	arpSenderIP = 14 // ARP for IPv4 over Ethernet: sender IP after htype, ptype, hlen, plen, op, sender MAC
	ipv6Next    = 6  // IPv6 header: next header
	icmpType    = 40 // first byte after the IPv6 header
	naTarget    = 48 // neighbour advertisement: type, code, checksum, flags, then the target
)

// maxFiltered4 and maxFiltered6 bound the addresses a program names (the
// kernel takes at most 4,096 instructions; an IPv4 address costs one, an
// IPv6 address eight). Past them the reader is woken for every packet of
// the family, as without a filter: slower, never blind.
const (
	maxFiltered4 = 2048
	maxFiltered6 = 384
)

// Compares per block, so that every jump to the block's accept stays within
// the 255 instructions a conditional jump can skip.
const (
	block4 = 200
	block6 = 30
)

// arpFilter returns a program that keeps the ARP packets whose sender IP is
// one of the IPv4 addresses in watch, and drops the rest.
func arpFilter(watch []netip.Addr) ([]bpf.RawInstruction, error) {
	var keys [][]uint32
	for _, a := range watch {
		if a.Is4() {
			keys = append(keys, words(a))
		}
	}
	if len(keys) > maxFiltered4 {
		return bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: keep}})
	}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: arpSenderIP, Size: 4},
		bpf.StoreScratch{Src: bpf.RegA, N: 0},
	}
	return bpf.Assemble(append(prog, matchAny(keys, block4)...))
}

// naFilter returns a program that keeps the neighbour advertisements whose
// target is one of the IPv6 addresses in watch, and drops the rest.
func naFilter(watch []netip.Addr) ([]bpf.RawInstruction, error) {
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: ipv6Next, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_ICMPV6, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadAbsolute{Off: icmpType, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: ipv6NA, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
	}
	var keys [][]uint32
	for _, a := range watch {
		if a.Is6() && !a.Is4In6() {
			keys = append(keys, words(a))
		}
	}
	if len(keys) > maxFiltered6 {
		return bpf.Assemble(append(prog, bpf.RetConstant{Val: keep}))
	}
	for i := range 4 {
		prog = append(prog,
			bpf.LoadAbsolute{Off: naTarget + 4*uint32(i), Size: 4},
			bpf.StoreScratch{Src: bpf.RegA, N: i})
	}
	return bpf.Assemble(append(prog, matchAny(keys, block6)...))
}

// keep is what a program returns for a packet it lets through: all of it.
const keep = 0xffff

// matchAny keeps the packet if the words in scratch M[0..] equal one of
// keys (all of the same length), and drops it otherwise. Keys come in
// blocks of at most per, each followed by its own "keep", since a
// conditional jump skips at most 255 instructions.
func matchAny(keys [][]uint32, per int) []bpf.Instruction {
	var prog []bpf.Instruction
	for len(keys) > 0 {
		n := min(per, len(keys))
		var hits []int // the jumps to this block's keep
		if len(keys[0]) == 1 {
			// One word: it stays in A for the whole block.
			prog = append(prog, bpf.LoadScratch{Dst: bpf.RegA, N: 0})
		}
		for _, k := range keys[:n] {
			for w, v := range k {
				if len(k) > 1 {
					prog = append(prog, bpf.LoadScratch{Dst: bpf.RegA, N: w})
				}
				if w < len(k)-1 {
					// To the next key: past the rest of this one.
					prog = append(prog, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: v, SkipTrue: uint8(2 * (len(k) - 1 - w))})
					continue
				}
				hits = append(hits, len(prog))
				prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v})
			}
		}
		prog = append(prog, bpf.Jump{Skip: 1}, bpf.RetConstant{Val: keep})
		at := len(prog) - 1
		for _, h := range hits {
			j := prog[h].(bpf.JumpIf)
			j.SkipTrue = uint8(at - h - 1)
			prog[h] = j
		}
		keys = keys[n:]
	}
	return append(prog, bpf.RetConstant{Val: 0})
}

// words splits an address into the big-endian 32-bit words a BPF load
// gives.
func words(a netip.Addr) []uint32 {
	b := a.AsSlice()
	w := make([]uint32, len(b)/4)
	for i := range w {
		w[i] = binary.BigEndian.Uint32(b[4*i:])
	}
	return w
}
