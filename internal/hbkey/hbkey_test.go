package hbkey

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vipd/vipd/internal/kube"
	"github.com/vipd/vipd/internal/lab/controlplane"
)

var suite controlplane.Suite

func TestMain(m *testing.M) { os.Exit(suite.Run(m)) }

const (
	k1 = "q3VbR6c8m2J0xWm9yB5cZ1sD4fT7gH2kL8nP0rS3uV6="
	k2 = "Z9yX8wV7uT6sR5qP4oN3mL2kJ1iH0gF9eD8cB7aA6+="
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	k, err := ReadFile(write("one", "  "+k1+"  \n\n"))
	if err != nil || string(k.Sign) != k1 || len(k.Accept) != 0 {
		t.Errorf("one key: %q %q %v", k.Sign, k.Accept, err)
	}
	k, err = ReadFile(write("two", k2+"\n"+k1+"\n"))
	if err != nil || string(k.Sign) != k2 || len(k.Accept) != 1 || string(k.Accept[0]) != k1 {
		t.Errorf("signing and accepted key: %q %q %v", k.Sign, k.Accept, err)
	}
	if _, err := ReadFile(write("empty", "\n \n")); !errors.Is(err, ErrNoKey) {
		t.Errorf("empty file: %v, want ErrNoKey", err)
	}
	if _, err := ReadFile(filepath.Join(dir, "absent")); !errors.Is(err, ErrNoKey) {
		t.Errorf("absent file: %v, want ErrNoKey", err)
	}
	if _, err := ReadFile(write("short", "too-short\n")); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Errorf("short key: %v", err)
	}

	// A mounted Secret: files key and accept.
	secret := filepath.Join(dir, "mounted")
	if err := os.Mkdir(secret, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(secret); !errors.Is(err, ErrNoKey) {
		t.Errorf("directory without key: %v, want ErrNoKey", err)
	}
	if err := os.WriteFile(filepath.Join(secret, DataKey), []byte(k1), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secret, DataAccept), []byte(k2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err = ReadFile(secret)
	if err != nil || string(k.Sign) != k1 || len(k.Accept) != 1 {
		t.Errorf("mounted Secret: %q %q %v", k.Sign, k.Accept, err)
	}
}

func TestParse(t *testing.T) {
	if _, err := Parse(map[string][]byte{"key": []byte(k1 + "\n" + k2)}); err == nil || !strings.Contains(err.Error(), "2 lines") {
		t.Errorf("two signing keys: %v", err)
	}
	if _, err := Parse(map[string][]byte{"accept": []byte(k1)}); !errors.Is(err, ErrNoKey) {
		t.Errorf("no signing key: %v", err)
	}
}

// updates collects what a watch reports.
type updates struct {
	mu  sync.Mutex
	all []Update
}

func (u *updates) add(x Update) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.all = append(u.all, x)
}

func (u *updates) wait(t *testing.T, what string, ok func(Update) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		u.mu.Lock()
		n := len(u.all)
		var last Update
		if n > 0 {
			last = u.all[n-1]
		}
		u.mu.Unlock()
		if n > 0 && ok(last) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; updates: %+v", what, u.all)
}

func signs(k string) func(Update) bool {
	return func(u Update) bool { return u.Keys != nil && string(u.Keys.Sign) == k }
}

func TestWatchFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	var u updates
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); WatchFile(ctx, path, u.add) }()
	t.Cleanup(func() { cancel(); <-done })
	u.wait(t, "no key yet", func(x Update) bool { return errors.Is(x.Err, ErrNoKey) })
	if err := os.WriteFile(path, []byte(k1), 0o600); err != nil {
		t.Fatal(err)
	}
	u.wait(t, "the key", signs(k1))
	if err := os.WriteFile(path, []byte(k2+"\n"+k1), 0o600); err != nil {
		t.Fatal(err)
	}
	u.wait(t, "the rotated key", signs(k2))
}

func TestWatchSecret(t *testing.T) {
	cp := suite.Need(t)
	client, err := kube.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := "hbkey-" + strings.ToLower(time.Now().Format("150405.000000"))
	ns = strings.ReplaceAll(ns, ".", "-")
	if _, err := client.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var u updates
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- WatchSecret(wctx, client, ns, "vipd-heartbeat-key", slog.New(slog.DiscardHandler), u.add)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	u.wait(t, "no Secret yet", func(x Update) bool { return errors.Is(x.Err, ErrNoKey) })
	secrets := client.Secrets(ns)
	s, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "vipd-heartbeat-key"},
		Data: map[string][]byte{"key": []byte(k1)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.wait(t, "the key from the Secret", signs(k1))
	s.Data = map[string][]byte{"key": []byte(k2), "accept": []byte(k1)}
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	u.wait(t, "the rotated key", func(x Update) bool {
		return signs(k2)(x) && len(x.Keys.Accept) == 1 && string(x.Keys.Accept[0]) == k1
	})
	// Another Secret in the namespace is not read.
	if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "other"},
		Data: map[string][]byte{"key": []byte(k1)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := secrets.Delete(ctx, "vipd-heartbeat-key", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	u.wait(t, "no key once the Secret is gone", func(x Update) bool { return errors.Is(x.Err, ErrNoKey) })
}
