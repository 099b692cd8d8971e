// Package hbkey finds the key that authenticates heartbeats: in a file on
// the node (a static pod's hostPath, or a mounted Secret), or in a Secret
// read through the API. Keys are reloaded when they change, so a rotation
// needs no restart.
//
// A key is the bytes of one trimmed line or value, at least
// heartbeat.MinKeyLen long. A file holds the signing key on its first
// non-empty line and keys that are also accepted on the following ones; a
// directory (a mounted Secret) and a Secret hold the signing key under
// "key" and, optionally, accepted keys one a line under "accept".
package hbkey

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vipd/vipd/internal/heartbeat"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Data keys of a Secret, and file names of a mounted one.
const (
	DataKey    = "key"
	DataAccept = "accept"
)

// ErrNoKey reports that the place a key should be holds none yet.
var ErrNoKey = errors.New("no heartbeat key")

// Parse reads keys from a Secret's data, or the files of a mounted one.
func Parse(data map[string][]byte) (heartbeat.Keys, error) {
	signLines := lines(data[DataKey])
	if len(signLines) == 0 {
		return heartbeat.Keys{}, fmt.Errorf("%w: %q is missing or empty", ErrNoKey, DataKey)
	}
	if len(signLines) > 1 {
		return heartbeat.Keys{}, fmt.Errorf("%q holds %d lines; put the one signing key there and keys also accepted under %q",
			DataKey, len(signLines), DataAccept)
	}
	k := heartbeat.Keys{Sign: signLines[0], Accept: lines(data[DataAccept])}
	if err := k.Validate(); err != nil {
		return heartbeat.Keys{}, err
	}
	return k, nil
}

// ReadFile reads keys from a file, or from a directory holding the files of
// a mounted Secret.
func ReadFile(path string) (heartbeat.Keys, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return heartbeat.Keys{}, fmt.Errorf("%w: %s does not exist", ErrNoKey, path)
	}
	if err != nil {
		return heartbeat.Keys{}, fmt.Errorf("reading heartbeat key %s: %w", path, err)
	}
	if fi.IsDir() {
		data := map[string][]byte{}
		for _, name := range []string{DataKey, DataAccept} {
			b, err := os.ReadFile(filepath.Join(path, name))
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return heartbeat.Keys{}, fmt.Errorf("reading heartbeat key %s: %w", path, err)
			}
			data[name] = b
		}
		k, err := Parse(data)
		if err != nil {
			return heartbeat.Keys{}, fmt.Errorf("heartbeat key directory %s: %w", path, err)
		}
		return k, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return heartbeat.Keys{}, fmt.Errorf("reading heartbeat key %s: %w", path, err)
	}
	ls := lines(b)
	if len(ls) == 0 {
		return heartbeat.Keys{}, fmt.Errorf("%w: %s is empty", ErrNoKey, path)
	}
	k := heartbeat.Keys{Sign: ls[0], Accept: ls[1:]}
	if err := k.Validate(); err != nil {
		return heartbeat.Keys{}, fmt.Errorf("heartbeat key file %s: %w", path, err)
	}
	return k, nil
}

// lines splits b into its non-empty lines, spaces trimmed.
func lines(b []byte) [][]byte {
	var out [][]byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if l = bytes.TrimSpace(l); len(l) > 0 {
			out = append(out, l)
		}
	}
	return out
}

// NewKey returns a fresh random key: 32 random bytes, base64-encoded, as
// `head -c 32 /dev/urandom | base64` makes one.
func NewKey() ([]byte, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("making a heartbeat key: %w", err)
	}
	return []byte(base64.StdEncoding.EncodeToString(raw)), nil
}

// Secret is the Secret that holds key for the agents to read.
func Secret(namespace, name string, key []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Data:       map[string][]byte{DataKey: key},
	}
}
