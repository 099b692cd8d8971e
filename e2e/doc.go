// Package e2e holds vipd's end-to-end tests and failover benchmarks. They
// run the vipd binary on the nodes of a network-namespace lab
// (internal/lab) against a real etcd and kube-apiserver
// (internal/lab/controlplane), and check from a client on the same layer-2
// segment what a user would check: who answers for the VIP, what goes over
// the wire, and how long a client goes without answers when the holder
// fails. See docs/testing.md.
package e2e
