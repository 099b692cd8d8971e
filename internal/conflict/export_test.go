package conflict

import "net/netip"

// OnRead has f called with the address of every packet a reader gets past
// the kernel's filter.
func (d *Detector) OnRead(f func(netip.Addr)) {
	d.mu.Lock()
	d.read = f
	d.mu.Unlock()
}

var (
	ARPFilter    = arpFilter
	NAFilter     = naFilter
	MaxFiltered4 = maxFiltered4
	MaxFiltered6 = maxFiltered6
)
