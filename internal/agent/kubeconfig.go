package agent

import (
	"log/slog"
	"os"
)

// adminConf is where kubeadm writes the cluster administrator's kubeconfig.
const adminConf = "/etc/kubernetes/admin.conf"

// defaultKubeconfig is the kubeconfig used when none is named: kubeadm's
// admin.conf if it exists, as kube-vip does (its static pod manifest
// mounts it there without naming it), else none: in-cluster configuration.
func defaultKubeconfig(named string, log *slog.Logger) string {
	if named != "" {
		return named
	}
	if st, err := os.Stat(adminConf); err == nil && st.Mode().IsRegular() {
		log.Info("no kubeconfig named; using kubeadm's, as kube-vip does", "kubeconfig", adminConf)
		return adminConf
	}
	return ""
}
