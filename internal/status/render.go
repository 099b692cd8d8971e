package status

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"
)

// Output formats.
const (
	OutputTable = ""
	OutputWide  = "wide"
	OutputJSON  = "json"
	OutputYAML  = "yaml"
)

// render writes r in format; nodes selects the agents' table instead of
// the VIPs' (JSON and YAML always hold both).
func render(w io.Writer, r Report, format string, nodes bool) error {
	switch format {
	case OutputJSON:
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return fmt.Errorf("encoding the report: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case OutputYAML:
		b, err := yaml.Marshal(r)
		if err != nil {
			return fmt.Errorf("encoding the report: %w", err)
		}
		_, err = w.Write(b)
		return err
	case OutputTable, OutputWide:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		if nodes {
			nodeTable(tw, r, format == OutputWide)
		} else {
			vipTable(tw, r, format == OutputWide)
		}
		for _, p := range r.Problems {
			fmt.Fprintf(tw, "problem: %s\n", p)
		}
		return tw.Flush()
	}
	return fmt.Errorf("unknown output format %q (use wide, json or yaml)", format)
}

func vipTable(w io.Writer, r Report, wide bool) {
	head := "VIP\tSERVES\tELECTION\tHOLDER\tSINCE\tTRANSITIONS\tLIVENESS\tPROBLEMS"
	if wide {
		head = "VIP\tSERVES\tNAMESPACE\tELECTION\tHOLDER\tSINCE\tTRANSITIONS\tLIVENESS\tCANDIDATES\tPROBLEMS"
	}
	fmt.Fprintln(w, head)
	for _, v := range r.VIPs {
		since := "-"
		if v.Since != nil {
			since = age(r.Time.Sub(*v.Since))
			if wide {
				since = v.Since.UTC().Format(time.RFC3339)
			}
		}
		cols := []string{dash(v.VIP), strings.Join(v.Serves, ","), dash(v.Election), dash(v.Holder), since,
			fmt.Sprint(v.Transitions), liveness(v), dash(strings.Join(v.Problems, "; "))}
		if wide {
			cands := "any"
			if v.Candidates != nil {
				cands = dash(strings.Join(v.Candidates, ","))
			}
			cols = []string{cols[0], cols[1], dash(v.ElectionNamespace), cols[2], cols[3], cols[4], cols[5], cols[6], cands, cols[7]}
		}
		fmt.Fprintln(w, strings.Join(cols, "\t"))
	}
}

func nodeTable(w io.Writer, r Report, wide bool) {
	head := "NODE\tVERSION\tLIVE\tLEASE\tHEARTBEAT\tVIPS\tADDRESSES"
	if wide {
		head = "NODE\tVERSION\tLIVE\tLEASE\tHEARTBEAT\tVIPS\tADDRESSES\tLISTENS\tSERVES"
	}
	fmt.Fprintln(w, head)
	for _, n := range r.Nodes {
		lease := n.Lease
		if n.LeaseAge != nil {
			lease += " " + age(seconds(*n.LeaseAge))
		}
		hb := "off"
		if n.Heartbeat != "" {
			hb = fmt.Sprintf("hears %d/%d, heard by %d/%d", n.Hears, n.Peers, n.HeardBy, n.HeardOf)
		}
		cols := []string{n.Name, dash(n.Version), yesNo(n.Live), lease, hb, fmt.Sprint(n.VIPs), dash(strings.Join(n.Addresses, ","))}
		if wide {
			var serves []string
			if n.ControlPlane {
				serves = append(serves, "control-plane")
			}
			if n.Services {
				serves = append(serves, "services")
			}
			cols = append(cols, dash(n.Heartbeat), dash(strings.Join(serves, ",")))
		}
		fmt.Fprintln(w, strings.Join(cols, "\t"))
	}
}

// liveness is the holder's liveness as the agents see it.
func liveness(v VIP) string {
	if v.Holder == "" || v.HolderLease == "" {
		return "-"
	}
	s := "not live: lease "
	if v.HolderLive {
		s = "live: lease "
	}
	s += v.HolderLease
	if v.HolderLeaseAge != nil {
		s += " " + age(seconds(*v.HolderLeaseAge))
	}
	if v.HeardOf > 0 {
		s += fmt.Sprintf(", heard %d/%d", v.HeardBy, v.HeardOf)
	}
	return s
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// age formats a duration the way kubectl does: 0.4s, 12s, 3m12s, 2h5m, 3d.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// significant is r without what changes by itself as time passes (ages),
// for --watch to tell a change from the clock ticking.
func significant(r Report) string {
	r.Time = time.Time{}
	vips := make([]VIP, len(r.VIPs))
	for i, v := range r.VIPs {
		v.HolderLeaseAge = nil
		vips[i] = v
	}
	nodes := make([]Node, len(r.Nodes))
	for i, n := range r.Nodes {
		n.LeaseAge = nil
		nodes[i] = n
	}
	r.VIPs, r.Nodes = vips, nodes
	b, _ := json.Marshal(r)
	return string(b)
}
