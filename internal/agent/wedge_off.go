//go:build !vipd_testhooks

package agent

// wedge is a test hook (build tag vipd_testhooks) that stops the main loop;
// without the tag it never fires.
func wedge() <-chan struct{} { return nil }
