package election

import "testing"

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestClaimWrites(t *testing.T) {
	e := &Elector{claims: newClaimWrites()}
	if !closed(e.Claiming()) {
		t.Fatal("Claiming open with no claim write")
	}
	e.countClaims([]job{{name: "a", op: opAcquire}, {name: "b", op: opRelease}, {name: "c", op: opAcquire}})
	open := e.Claiming()
	if closed(open) {
		t.Fatal("Claiming closed with two takes queued")
	}
	e.claims.add(-1)
	if closed(open) || closed(e.Claiming()) {
		t.Fatal("Claiming closed with a take still in flight")
	}
	e.claims.add(-1)
	if !closed(open) || !closed(e.Claiming()) {
		t.Fatal("Claiming still open once the takes are done")
	}
	e.countClaims([]job{{name: "d", op: opAcquire}})
	if closed(e.Claiming()) {
		t.Fatal("a later take does not open Claiming again")
	}
	e.claims.reset()
	if !closed(e.Claiming()) {
		t.Fatal("Claiming open after reset")
	}
}
