// Package notify wakes a goroutine through a channel of capacity one.
package notify

// Signal sends on a channel of capacity one without blocking: a value
// already waiting says the same, so signals coalesce.
func Signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
