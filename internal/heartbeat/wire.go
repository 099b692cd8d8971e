package heartbeat

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/fnv"
)

// A beat on the wire, version 2 (all integers big-endian). Each beat is
// addressed to one peer:
//
//	offset  size  field
//	0       6     magic "VIPDHB"
//	6       1     version, '2'
//	7       1     flags: bit 0 APIOK, bit 1 Live; other bits are ignored
//	8       4     key ID of the signing key (KeyID)
//	12      8     incarnation of the sender: its start time, Unix nanoseconds
//	20      8     sequence number of the sender's round of beats, from 1
//	28      8     echo incarnation: the receiver's incarnation ...
//	36      8     echo sequence: ... and the newest of its sequence numbers
//	              the sender has received (zeros if none yet)
//	44      1+C   cluster identity, length-prefixed
//	        1+F   sender's node name, length-prefixed, at least 1 byte
//	        1+T   receiver's node name, length-prefixed, at least 1 byte
//	        2+4H  hashes of the peers the sender hears (nameHash)
//	        2+4A  hashes of the contests the sender asks about
//	        2+4O  hashes of the asked contests the sender holds
//	        32    HMAC-SHA256 of everything above, under the signing key
//
// Nothing may follow the MAC. The echo is what makes a beat fresh: the
// receiver knows when it sent the beat being echoed, and the MAC proves the
// sender built this beat after receiving it. A replayed beat echoes an old
// sequence number, or another incarnation, and proves nothing.
const (
	magic     = "VIPDHB"
	version   = '2'
	headerLen = len(magic) + 1 + 1 + 4 + 8 + 8 + 8 + 8
	macLen    = 32
	maxName   = 255
	// maxList bounds each hash list, so a beat stays well under 16 KiB.
	maxList = 1024

	// MaxBeatLen is the size of the largest valid beat.
	MaxBeatLen = headerLen + 3*(1+maxName) + 3*(2+4*maxList) + macLen
)

const (
	flagAPIOK = 1 << 0
	flagLive  = 1 << 1
)

// Reasons a datagram is not a beat.
var (
	errShort   = errors.New("shorter than a beat")
	errMagic   = errors.New("bad magic")
	errVersion = errors.New("unsupported version")
	errLength  = errors.New("lengths do not match the datagram size")
	errNoName  = errors.New("empty node name")
)

// beat is one decoded heartbeat.
type beat struct {
	KeyID            keyID4
	Incarnation, Seq uint64
	EchoInc, EchoSeq uint64
	State            State
	Cluster          string
	From, To         string
	Hears            []uint32
	Asks, Holds      []uint32
}

// appendBeat appends b, signed with key, to dst. Names must be at most
// maxName bytes and lists at most maxList long; the sender ensures that.
func appendBeat(dst []byte, b beat, key *macer) []byte {
	start := len(dst)
	var flags byte
	if b.State.APIOK {
		flags |= flagAPIOK
	}
	if b.State.Live {
		flags |= flagLive
	}
	dst = append(dst, magic...)
	dst = append(dst, version, flags)
	dst = append(dst, b.KeyID[:]...)
	dst = binary.BigEndian.AppendUint64(dst, b.Incarnation)
	dst = binary.BigEndian.AppendUint64(dst, b.Seq)
	dst = binary.BigEndian.AppendUint64(dst, b.EchoInc)
	dst = binary.BigEndian.AppendUint64(dst, b.EchoSeq)
	for _, s := range []string{b.Cluster, b.From, b.To} {
		dst = append(dst, byte(len(s)))
		dst = append(dst, s...)
	}
	for _, l := range [][]uint32{b.Hears, b.Asks, b.Holds} {
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(l)))
		for _, h := range l {
			dst = binary.BigEndian.AppendUint32(dst, h)
		}
	}
	return key.sum(dst, dst[start:])
}

// decodeBeat parses one datagram and returns the beat, the signed part and
// the MAC, which the caller checks with the key named by KeyID. It never
// panics, whatever p holds. The names come from nc when it has them (nil:
// always new strings).
func decodeBeat(p []byte, nc *nameCache) (b beat, body, sum []byte, err error) {
	if len(p) < headerLen+3+6+macLen {
		return beat{}, nil, nil, errShort
	}
	if string(p[:len(magic)]) != magic {
		return beat{}, nil, nil, errMagic
	}
	if p[len(magic)] != version {
		return beat{}, nil, nil, errVersion
	}
	flags := p[len(magic)+1]
	b.State = State{APIOK: flags&flagAPIOK != 0, Live: flags&flagLive != 0}
	copy(b.KeyID[:], p[8:12])
	b.Incarnation = binary.BigEndian.Uint64(p[12:20])
	b.Seq = binary.BigEndian.Uint64(p[20:28])
	b.EchoInc = binary.BigEndian.Uint64(p[28:36])
	b.EchoSeq = binary.BigEndian.Uint64(p[36:44])
	body, sum = p[:len(p)-macLen], p[len(p)-macLen:]
	rest := body[headerLen:]
	var names [3]string
	for i := range names {
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return beat{}, nil, nil, errLength
		}
		n := int(rest[0])
		names[i], rest = nc.get(rest[1:1+n]), rest[1+n:]
	}
	b.Cluster, b.From, b.To = names[0], names[1], names[2]
	if b.From == "" || b.To == "" {
		return beat{}, nil, nil, errNoName
	}
	var lists [3][]uint32
	for i := range lists {
		if len(rest) < 2 {
			return beat{}, nil, nil, errLength
		}
		n := int(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
		if n > maxList || len(rest) < 4*n {
			return beat{}, nil, nil, errLength
		}
		if n > 0 {
			lists[i] = make([]uint32, n)
			for j := range lists[i] {
				lists[i][j] = binary.BigEndian.Uint32(rest[4*j:])
			}
		}
		rest = rest[4*n:]
	}
	if len(rest) != 0 {
		return beat{}, nil, nil, errLength
	}
	b.Hears, b.Asks, b.Holds = lists[0], lists[1], lists[2]
	return b, body, sum, nil
}

// nameCache keeps the strings of the names beats carry, so that decoding
// a beat does not make them anew: the same few names (the cluster, this
// node, its peers) come in hundreds of times a second. It is bounded, so
// datagrams with made-up names cannot grow it, only make it miss. Not safe
// for concurrent use.
type nameCache struct {
	s    [64]string
	next int
}

// get returns b as a string, from the cache if it holds it.
func (c *nameCache) get(b []byte) string {
	if c == nil {
		return string(b)
	}
	for _, s := range c.s {
		if s == string(b) { // compared without converting
			return s
		}
	}
	s := string(b)
	c.s[c.next] = s
	c.next = (c.next + 1) % len(c.s)
	return s
}

// authentic checks a beat's MAC under key in constant time.
func authentic(key *macer, body, sum []byte) bool {
	var buf [sha256.Size]byte
	return hmac.Equal(key.sum(buf[:0], body), sum)
}

// nameHash is how beats refer to node and contest names: four bytes of
// FNV-1a. A collision can only make a peer look heard by someone, or a
// contest look held, which errs towards the Lease: never towards two
// holders.
func nameHash(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}
