#!/usr/bin/env bash
# image.sh builds vipd's container image from the Dockerfile with buildah:
# no registry, no container daemon. The Dockerfile's build stage needs a Go
# toolchain image; where none can be pulled, this script makes one from the
# host's Go (GOROOT, statically linked) and feeds the build the host's
# module cache, so nothing is downloaded.
#
#   hack/image.sh VERSION [OUT.tar]
#
# Tags the image localhost/vipd:VERSION; with OUT.tar also writes it as an
# OCI archive that `ctr -n k8s.io images import` (containerd) or
# `podman load` reads. Progress goes to stderr.
set -euo pipefail

version=${1:?usage: hack/image.sh VERSION [OUT.tar]}
out=${2:-}
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'image: %s\n' "$*" >&2; }

command -v buildah >/dev/null || { log "buildah is missing: apt-get install buildah (make deps does)"; exit 1; }
# vfs and chroot isolation work inside a container or VM without overlay
# mounts, user namespaces or a daemon; VIPD_BUILDAH_STORAGE overrides.
bh=(buildah --storage-driver "${VIPD_BUILDAH_STORAGE:-vfs}")

goroot=$(go env GOROOT)
gover=$(go env GOVERSION)
goimage="localhost/vipd-go:${gover#go}"
if ! "${bh[@]}" inspect --type image "$goimage" >/dev/null 2>&1; then
	log "making the Go toolchain image $goimage from $goroot"
	ctr=$("${bh[@]}" from scratch)
	trap '"${bh[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
	"${bh[@]}" copy "$ctr" "$goroot" /usr/local/go >/dev/null
	"${bh[@]}" config \
		--env PATH=/usr/local/go/bin \
		--env HOME=/root --env TMPDIR=/tmp \
		--env GOPATH=/go --env GOCACHE=/root/.cache/go-build \
		--env GOTOOLCHAIN=local --env GOPROXY=off \
		"$ctr"
	"${bh[@]}" commit --quiet "$ctr" "$goimage" >/dev/null
	"${bh[@]}" rm "$ctr" >/dev/null
	trap - EXIT
fi

modcache=$(go env GOMODCACHE)
(cd "$repo_root" && go mod download)
revision=$(git -C "$repo_root" rev-parse HEAD 2>/dev/null || echo unknown)
tag="localhost/vipd:$version"
log "building $tag"
# An empty /tmp for the build stage, the module cache read-only, the build
# cache shared (vipd builds in seconds when the host built it before).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${bh[@]}" bud --isolation chroot --layers=false \
	--build-arg GO_IMAGE="$goimage" \
	--build-arg VERSION="$version" \
	--build-arg REVISION="$revision" \
	--volume "$modcache:/go/pkg/mod:ro" \
	--volume "$(go env GOCACHE):/root/.cache/go-build" \
	--volume "$tmp:/tmp" \
	--tag "$tag" \
	--file "$repo_root/Dockerfile" "$repo_root" >&2
# The image it replaced under the same tag, if any, is of no use now.
"${bh[@]}" rmi --prune >/dev/null 2>&1 || true
if [[ -n "$out" ]]; then
	rm -f "$out"
	"${bh[@]}" push --quiet "$tag" "oci-archive:$out:$tag" >&2
	log "wrote $out"
fi
echo "$tag"
