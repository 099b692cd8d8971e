package heartbeat

import (
	"encoding/binary"
	"errors"
)

// A beat on the wire (all integers big-endian):
//
//	offset  size  field
//	0       6     magic "VIPDHB"
//	6       1     version, '1' (so a beat starts with "VIPDHB1")
//	7       1     flags: bit 0 APIOK, bit 1 Live; other bits are ignored
//	8       8     incarnation: random, chosen when the sender's Monitor is made
//	16      8     sequence number, counting up from 1 within an incarnation
//	24      1     length C of the cluster identity
//	25      C     cluster identity
//	25+C    1     length N of the node name, at least 1
//	26+C    N     node name
//
// Nothing may follow the node name: a longer or different layout gets a new
// version. Unknown flag bits are ignored, so flags can be added within
// version 1.
const (
	magic     = "VIPDHB"
	version   = '1'
	headerLen = len(magic) + 1 + 1 + 8 + 8
	maxName   = 255

	// MaxBeatLen is the size of the largest valid beat.
	MaxBeatLen = headerLen + 1 + maxName + 1 + maxName
)

const (
	flagAPIOK = 1 << 0
	flagLive  = 1 << 1
)

// Reasons a datagram is not a beat.
var (
	errShort   = errors.New("shorter than a beat header")
	errMagic   = errors.New("bad magic")
	errVersion = errors.New("unsupported version")
	errLength  = errors.New("name lengths do not match the datagram size")
	errNoNode  = errors.New("empty node name")
)

// beat is one decoded heartbeat.
type beat struct {
	Cluster     string
	Node        string
	Incarnation uint64
	Seq         uint64
	State       State
}

// appendBeat appends the encoding of b to dst. Cluster and Node must be at
// most maxName bytes; New checks that for what this package sends.
func appendBeat(dst []byte, b beat) []byte {
	var flags byte
	if b.State.APIOK {
		flags |= flagAPIOK
	}
	if b.State.Live {
		flags |= flagLive
	}
	dst = append(dst, magic...)
	dst = append(dst, version, flags)
	dst = binary.BigEndian.AppendUint64(dst, b.Incarnation)
	dst = binary.BigEndian.AppendUint64(dst, b.Seq)
	dst = append(dst, byte(len(b.Cluster)))
	dst = append(dst, b.Cluster...)
	dst = append(dst, byte(len(b.Node)))
	dst = append(dst, b.Node...)
	return dst
}

// decodeBeat parses one datagram. It never panics, whatever p holds.
func decodeBeat(p []byte) (beat, error) {
	if len(p) < headerLen+2 {
		return beat{}, errShort
	}
	if string(p[:len(magic)]) != magic {
		return beat{}, errMagic
	}
	if p[len(magic)] != version {
		return beat{}, errVersion
	}
	flags := p[len(magic)+1]
	b := beat{
		Incarnation: binary.BigEndian.Uint64(p[8:16]),
		Seq:         binary.BigEndian.Uint64(p[16:24]),
		State:       State{APIOK: flags&flagAPIOK != 0, Live: flags&flagLive != 0},
	}
	rest := p[headerLen:]
	c := int(rest[0])
	if len(rest) < 1+c+1 {
		return beat{}, errLength
	}
	b.Cluster = string(rest[1 : 1+c])
	rest = rest[1+c:]
	n := int(rest[0])
	if n == 0 {
		return beat{}, errNoNode
	}
	if len(rest) != 1+n {
		return beat{}, errLength
	}
	b.Node = string(rest[1:])
	return b, nil
}
