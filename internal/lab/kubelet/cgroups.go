package kubelet

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

const cgroupFS = "/sys/fs/cgroup"

// makeCgroups creates the kubelet's cgroup root, name, in every cgroup
// hierarchy of the machine (one per controller on cgroup v1, the unified
// one on v2).
func makeCgroups(name string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupFS, &st); err != nil {
		return fmt.Errorf("reading %s: %w", cgroupFS, err)
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		dir := filepath.Join(cgroupFS, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		// Let the kubelet's own cgroups below use the controllers.
		ctl, err := os.ReadFile(filepath.Join(cgroupFS, "cgroup.subtree_control"))
		if err == nil {
			var enable []string
			for _, c := range strings.Fields(string(ctl)) {
				enable = append(enable, "+"+c)
			}
			_ = os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0o644)
		}
		return nil
	}
	entries, err := os.ReadDir(cgroupFS)
	if err != nil {
		return fmt.Errorf("listing cgroup hierarchies: %w", err)
	}
	made := 0
	for _, e := range entries {
		hier := filepath.Join(cgroupFS, e.Name())
		if err := unix.Statfs(hier, &st); err != nil || st.Type != unix.CGROUP_SUPER_MAGIC {
			continue // cgroup v2 mounted beside v1 ("unified"), or not a hierarchy
		}
		dir := filepath.Join(hier, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		made++
		// A v1 cpuset takes no task until it has CPUs and memory nodes.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(hier, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("setting %s of %s: %w", f, dir, err)
				}
			}
		}
	}
	if made == 0 {
		return fmt.Errorf("no cgroup hierarchy under %s", cgroupFS)
	}
	return nil
}

// removeCgroups removes the cgroup name wherever it is, in every hierarchy
// (the kubelet also makes it in the unified one beside v1), with every
// cgroup below it, deepest first. They must be empty: the pods have stopped.
func removeCgroups(name string) error {
	if name == "" {
		return nil
	}
	dirs, _ := filepath.Glob(filepath.Join(cgroupFS, "*", name))
	dirs = append(dirs, filepath.Join(cgroupFS, name))
	var errs []error
	for _, root := range dirs {
		var all []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				all = append(all, p)
			}
			return nil
		})
		slices.Reverse(all)
		for _, p := range all {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", p, err))
			}
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount below dir (containerd's snapshots and
// shm, the kubelet's root), deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			p := unescapeMount(fields[4])
			if p == dir || strings.HasPrefix(p, dir+"/") {
				points = append(points, p)
			}
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, p := range slices.Compact(points) {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}
