package status

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/vipd/vipd/internal/kube"
)

// DefaultNamespace is where vipd's Leases are unless configured otherwise.
const DefaultNamespace = "kube-system"

// Options configures Run.
type Options struct {
	Client kube.Interface
	// Namespace holds the agents' node Leases; "" looks for them across
	// the cluster, and falls back to DefaultNamespace.
	Namespace string
	// Output is OutputTable, OutputWide, OutputJSON or OutputYAML.
	Output string
	// Nodes shows the agents instead of the VIPs (tables only).
	Nodes bool
	// Watch keeps running and prints the report again whenever it changes.
	Watch bool
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// recheck is how often --watch recomputes without a change from the API
// server: an agent that stops renewing changes nothing there, yet its
// Lease expires.
const recheck = time.Second

// Run prints the report to w, once or, with Watch, until ctx ends.
func Run(ctx context.Context, o Options, w io.Writer) error {
	if o.Now == nil {
		o.Now = time.Now
	}
	switch o.Output {
	case OutputTable, OutputWide, OutputJSON, OutputYAML:
	default:
		return fmt.Errorf("unknown output format %q (use wide, json or yaml)", o.Output)
	}
	ns := o.Namespace
	if ns == "" {
		var err error
		if ns, err = findNamespace(ctx, o.Client, DefaultNamespace); err != nil {
			return err
		}
	}
	// One read straight from the API first: it fails fast, with a clear
	// message, where a watch would only retry.
	snap, notes, err := gather(ctx, apiSource{o.Client}, ns)
	if err != nil {
		return err
	}
	r := report(snap, notes, o.Now())
	if err := render(w, r, o.Output, o.Nodes); err != nil {
		return err
	}
	if !o.Watch {
		return nil
	}
	src := newWatchSource(ctx, o.Client)
	last := significant(r)
	tick := time.NewTicker(recheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-src.changed:
		case <-tick.C:
		}
		snap, notes, err := gather(ctx, src, ns)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		r := report(snap, notes, o.Now())
		if sig := significant(r); sig != last {
			last = sig
			switch o.Output {
			case OutputTable, OutputWide:
				fmt.Fprintf(w, "\n--- %s\n", r.Time.Format(time.TimeOnly))
			case OutputYAML:
				fmt.Fprintln(w, "---")
			}
			if err := render(w, r, o.Output, o.Nodes); err != nil {
				return err
			}
		}
	}
}

func report(s Snapshot, notes []string, now time.Time) Report {
	r := Compute(s, now)
	r.Problems = append(r.Problems, notes...)
	return r
}
