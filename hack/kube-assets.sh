#!/usr/bin/env bash
# kube-assets.sh makes sure the test control plane binaries are in one folder:
#   kube-apiserver  built from the k8s.io/kubernetes version pinned in tools/kubernetes
#   kubelet         the same release's kubelet, for the test that runs vipd's manifests
#   etcd            a link to Debian's /usr/bin/etcd (package etcd-server)
# envtest (internal/lab/controlplane) runs them from there. Safe to run again:
# it only builds or installs what is missing or stale.
#
# Progress goes to stderr; the last line on stdout is the assets folder.
set -euo pipefail

log() { printf 'kube-assets: %s\n' "$*" >&2; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir="$repo_root/tools/kubernetes"
assets_dir="${VIPD_KUBE_ASSETS:-$HOME/.cache/vipd/kube-assets}"

mkdir -p "$assets_dir"
assets_dir=$(cd "$assets_dir" && pwd)

# --- kube-apiserver and kubelet ----------------------------------------------
# build NAME: k8s.io/kubernetes/cmd/NAME at the pinned version, unless the
# binary is newer than the pin.
build() {
	local name=$1 bin="$assets_dir/$1"
	if [[ -x "$bin" && "$bin" -nt "$tools_dir/go.mod" && "$bin" -nt "$tools_dir/go.sum" ]]; then
		log "$name is up to date: $bin"
		return
	fi
	local version major minor pkg ldflags tmp
	version=$(cd "$tools_dir" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
	log "building $name $version into $bin (a first build takes minutes on 2 cores, later ones hit the Go build cache)"
	# Stamp the version so `NAME --version` tells which release runs;
	# -X only changes the link step, so cached compiles are still reused.
	major=${version#v}
	major=${major%%.*}
	minor=${version#v*.}
	minor=${minor%%.*}
	pkg=k8s.io/component-base/version
	ldflags="-X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
	# Build to a temporary name so an interrupted build never looks up to date.
	tmp="$bin.tmp.$$"
	trap 'rm -f "$tmp"' EXIT
	(cd "$tools_dir" && go build -ldflags "$ldflags" -o "$tmp" "k8s.io/kubernetes/cmd/$name")
	mv -f "$tmp" "$bin"
	trap - EXIT
	log "built $("$bin" --version)"
}
build kube-apiserver
# The kubelet runs vipd's manifests in e2e/kubelet_test.go.
build kubelet

# --- etcd -----------------------------------------------------------------------
if [[ ! -x /usr/bin/etcd ]]; then
	log "installing etcd-server (Debian package)"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y etcd-server >&2; then
		log "install failed; refreshing package lists and retrying"
		apt-get update >&2
		apt-get install -y etcd-server >&2
	fi
	# The package may enable and start a system etcd on 2379/2380. The tests
	# never use it (envtest starts its own etcd on free ports), so don't leave a
	# stray server running that someone could mistake for the test one.
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
		log "stopping and disabling the system etcd service started by the package"
		systemctl disable --now etcd >&2 || log "warning: could not stop the system etcd service"
	fi
fi
ln -sfn /usr/bin/etcd "$assets_dir/etcd"
log "etcd: $("$assets_dir/etcd" --version | head -n1)"

echo "$assets_dir"
