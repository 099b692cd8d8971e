//go:build tools

// Package tools pins the kube-apiserver that the test bed runs. The build
// itself is done by hack/kube-apiserver.sh: go build k8s.io/kubernetes/cmd/kube-apiserver.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
