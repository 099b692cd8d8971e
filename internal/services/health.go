package services

// Synced reports whether the controller has read the cluster (its caches
// have synced, or it found it may not list Services) and so knows which
// service addresses exist.
func (c *Controller) Synced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.planned || c.recorder != nil
}
