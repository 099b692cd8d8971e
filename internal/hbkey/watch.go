package hbkey

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/tools/cache"

	"github.com/vipd/vipd/internal/heartbeat"
	"github.com/vipd/vipd/internal/kube"
)

// Update is the outcome of one look at the key: keys, or why there are
// none (Err wraps ErrNoKey when the place is simply empty).
type Update struct {
	Keys *heartbeat.Keys
	Err  error
}

// FilePoll is how often a key file is looked at again. Kubelet updates a
// mounted Secret within about a minute; this adds little to that.
const FilePoll = 2 * time.Second

// WatchFile reports the keys in path now and whenever they change, until
// ctx ends.
func WatchFile(ctx context.Context, path string, report func(Update)) {
	var last []byte
	first := true
	t := time.NewTicker(FilePoll)
	defer t.Stop()
	for {
		sig := fileSignature(path)
		if first || !bytes.Equal(sig, last) {
			first, last = false, sig
			k, err := ReadFile(path)
			if err != nil {
				report(Update{Err: err})
			} else {
				report(Update{Keys: &k})
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fileSignature changes when the key material at path may have: the
// contents of the file, or of the files of the directory. A mounted Secret
// is updated by swapping a symbolic link, so contents, not times, count.
func fileSignature(path string) []byte {
	var sig []byte
	for _, p := range []string{path, filepath.Join(path, DataKey), filepath.Join(path, DataAccept)} {
		b, err := os.ReadFile(p)
		sig = append(sig, fmt.Sprintf("%s:%v:%d:", p, err == nil, len(b))...)
		sig = append(sig, b...)
	}
	return sig
}

// WatchSecret reports the keys in the named Secret now and whenever it
// changes, until ctx ends. It watches that one Secret by name, so RBAC
// can grant exactly that.
func WatchSecret(ctx context.Context, client kube.Interface, namespace, name string, log *slog.Logger, report func(Update)) error {
	where := namespace + "/" + name
	inf := kube.NewInformer(client.Secrets(namespace), &corev1.Secret{}, kube.InformerOptions{
		Tweak: func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}})
	var lastErr string
	if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		// Said once per kind of failure: an identity that may not read the
		// Secret would otherwise fill the log.
		msg := err.Error()
		if apierrors.IsForbidden(err) {
			msg = "forbidden"
		}
		if msg != lastErr {
			lastErr = msg
			log.Warn("cannot read the heartbeat key Secret; failover waits for Lease expiry until it can", "secret", where, "err", err)
		}
	}); err != nil {
		return fmt.Errorf("watching Secret %s: %w", where, err)
	}
	var mu sync.Mutex // the informer's handlers and the check after sync
	var last *heartbeat.Keys
	have := false
	look := func(obj any) {
		mu.Lock()
		defer mu.Unlock()
		s, _ := obj.(*corev1.Secret)
		var u Update
		if s == nil {
			u.Err = fmt.Errorf("%w: Secret %s does not exist", ErrNoKey, where)
		} else if k, err := Parse(s.Data); err != nil {
			u.Err = fmt.Errorf("Secret %s: %w", where, err)
		} else {
			u.Keys = &k
		}
		if have && sameKeys(u.Keys, last) && u.Err == nil {
			return
		}
		have, last = true, u.Keys
		report(u)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    look,
		UpdateFunc: func(_, obj any) { look(obj) },
		DeleteFunc: func(any) { look(nil) },
	}); err != nil {
		return fmt.Errorf("watching Secret %s: %w", where, err)
	}
	defer kube.Start(ctx, inf)()
	if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		mu.Lock()
		empty := !have
		mu.Unlock()
		if empty {
			look(nil) // synced and empty: there is no such Secret yet
		}
	}
	<-ctx.Done()
	return nil
}

func sameKeys(a, b *heartbeat.Keys) bool {
	if a == nil || b == nil {
		return a == b
	}
	return bytes.Equal(a.Sign, b.Sign) && slices.EqualFunc(a.Accept, b.Accept, bytes.Equal)
}
