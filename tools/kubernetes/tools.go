//go:build tools

// Package tools pins the Kubernetes release the test bed runs: kube-apiserver
// for every lab test, kubelet for the test that runs vipd's manifests. The
// builds themselves are done by hack/kube-assets.sh.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
