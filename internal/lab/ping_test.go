package lab

import (
	"testing"
	"time"
)

// TestLongestGap: the gap is the client's wait for an answer; a stretch in
// which the loop sent nothing is not a wait, a lost or late echo is.
func TestLongestGap(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	const lost = -1
	record := func(sentReply ...[2]int) *PingRecord {
		r := &PingRecord{p: &pinger{interval: 10 * time.Millisecond}}
		for i, sr := range sentReply {
			e := Echo{Seq: i, Sent: ms(sr[0])}
			if sr[1] != lost {
				e.Reply = ms(sr[1])
			}
			r.echoes = append(r.echoes, e)
		}
		return r
	}
	for _, tc := range []struct {
		name string
		r    *PingRecord
		want time.Duration
	}{
		{"steady", record([2]int{0, 1}, [2]int{10, 11}, [2]int{20, 21}), 10 * time.Millisecond},
		{"three lost", record([2]int{0, 1}, [2]int{10, lost}, [2]int{20, lost}, [2]int{30, lost}, [2]int{40, 41}), 40 * time.Millisecond},
		{"a late answer", record([2]int{0, 1}, [2]int{10, 75}, [2]int{20, 76}), 74 * time.Millisecond},
		{"the loop not scheduled", record([2]int{0, 1}, [2]int{90, 91}, [2]int{100, 101}), 11 * time.Millisecond},
		{"not scheduled, then lost", record([2]int{0, 1}, [2]int{90, lost}, [2]int{100, lost}, [2]int{110, 111}), 31 * time.Millisecond},
		{"lost, then not scheduled", record([2]int{0, 1}, [2]int{10, lost}, [2]int{90, 91}), 90 * time.Millisecond},
		{"one answer", record([2]int{0, 1}, [2]int{10, lost}), 0},
	} {
		if got := tc.r.LongestGap(t0, ms(1000)); got != tc.want {
			t.Errorf("%s: longest gap %v, want %v", tc.name, got, tc.want)
		}
	}
	// The window counts echoes by when they were sent.
	r := record([2]int{0, 1}, [2]int{10, lost}, [2]int{20, lost}, [2]int{30, 31}, [2]int{40, 41}, [2]int{50, 51})
	if got, want := r.LongestGap(ms(30), ms(1000)), 10*time.Millisecond; got != want {
		t.Errorf("from the fourth echo on: longest gap %v, want %v", got, want)
	}
}
