package heartbeat

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"sync"
)

// MinKeyLen is the shortest key accepted: 32 bytes, such as the base64 text
// of 24 random bytes or more (`head -c 32 /dev/urandom | base64`).
const MinKeyLen = 32

// Keys authenticate beats with HMAC-SHA256. Every beat is signed with Sign;
// a beat signed with Sign or any of Accept is accepted. Rotation without an
// outage: add the new key to Accept everywhere, then make it Sign (the old
// one moving to Accept), then drop the old one.
type Keys struct {
	Sign   []byte
	Accept [][]byte
}

// insecureKey is public: with it beats are checked for integrity only.
// Anyone can forge them; it exists for an explicit opt-out, never a default.
var insecureKey = []byte("vipd heartbeats: NOT AUTHENTICATED, any host can forge these")

// InsecureKeys are the well-known keys of --heartbeat-insecure.
func InsecureKeys() Keys { return Keys{Sign: insecureKey} }

// IsInsecure tells whether k are InsecureKeys.
func (k Keys) IsInsecure() bool { return hmac.Equal(k.Sign, insecureKey) }

// Validate checks every key is long enough.
func (k Keys) Validate() error {
	if len(k.Sign) == 0 {
		return errors.New("no signing key")
	}
	for i, key := range append([][]byte{k.Sign}, k.Accept...) {
		if len(key) < MinKeyLen {
			what := "signing key"
			if i > 0 {
				what = fmt.Sprintf("accepted key %d", i)
			}
			return fmt.Errorf("%s is %d bytes; at least %d are needed", what, len(key), MinKeyLen)
		}
	}
	return nil
}

// KeyID names a key without revealing it: the first four bytes of a
// SHA-256 over a fixed label and the key. Logs and beats carry it, so a
// beat signed with a key this agent lacks (a rotation gone wrong) is
// reported as such.
func KeyID(key []byte) string {
	id := keyID(key)
	return fmt.Sprintf("%x", id[:])
}

type keyID4 [4]byte

func keyID(key []byte) keyID4 {
	h := sha256.New()
	h.Write([]byte("vipd heartbeat key id\x00"))
	h.Write(key)
	var id keyID4
	copy(id[:], h.Sum(nil))
	return id
}

// keyring is Keys prepared for use.
type keyring struct {
	sign   *macer
	signID keyID4
	byID   map[keyID4]*macer
}

func newKeyring(k Keys) (*keyring, error) {
	if err := k.Validate(); err != nil {
		return nil, err
	}
	r := &keyring{signID: keyID(k.Sign), byID: map[keyID4]*macer{}}
	for _, key := range append([][]byte{k.Sign}, k.Accept...) {
		r.byID[keyID(key)] = newMACer(key)
	}
	r.sign = r.byID[r.signID]
	return r, nil
}

func (r *keyring) ids() []string {
	var out []string
	for id := range r.byID {
		out = append(out, fmt.Sprintf("%x", id[:]))
	}
	return out
}

// macer computes HMAC-SHA256 under one key, reusing the keyed state: an
// agent signs and checks a beat per peer every 20 ms, and a fresh HMAC
// costs two more SHA-256 blocks and its allocations each time. It is safe
// for concurrent use (sending and receiving run apart).
type macer struct{ pool sync.Pool }

func newMACer(key []byte) *macer {
	m := &macer{}
	m.pool.New = func() any { return hmac.New(sha256.New, key) }
	return m
}

// sum appends the MAC of body to dst.
func (m *macer) sum(dst, body []byte) []byte {
	h := m.pool.Get().(hash.Hash)
	h.Reset()
	h.Write(body)
	dst = h.Sum(dst)
	m.pool.Put(h)
	return dst
}
