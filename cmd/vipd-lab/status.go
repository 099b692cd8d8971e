package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// showStatus runs `vipd status` as an operator would, once the claim names
// holder (the report is read from the API, which learns of a takeover a
// moment after the interface shows it), and prints its table.
func (d *demo) showStatus(ctx context.Context, holder string, extra ...string) error {
	var out []byte
	err := poll(ctx, 10*time.Second, 50*time.Millisecond, "waiting for vipd status to name "+holder, func() (bool, error) {
		l, err := d.lease(ctx)
		if err != nil || leaseHolder(l) != holder {
			return false, err
		}
		args := append([]string{"status", "--kubeconfig", d.operator, "-n", leaseNamespace}, extra...)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err = exec.CommandContext(cctx, d.opts.vipd, args...).CombinedOutput()
		if err != nil {
			return false, fmt.Errorf("vipd %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	d.say("$ %s", strings.Join(append([]string{"vipd status"}, extra...), " "))
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Fprintf(d.out, "          %s\n", line)
	}
	return nil
}
