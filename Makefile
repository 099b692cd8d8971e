# vipd's build, test and demo entry points. The targets that run the lab
# (test, demo, bench*) need root: they build network namespaces and install
# what they need on first use (`make deps`).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO      ?= go
# The release this tree is (VERSION file): the image tag, and the tag the
# manifests in deploy/ name.
VERSION ?= $(shell cat VERSION)
LDFLAGS := -X main.version=$(VERSION)

# Debian packages the tests and the lab use: etcd for the test control plane,
# `ip` (iproute2) for namespaces, veths and the bridge, `nft` (nftables) for
# packet drops, `ping` and `arping` in the lab's own tests, and CA
# certificates for Go's module downloads. Packet sockets need no package;
# tcpdump is handy by hand but nothing runs it.
# containerd and runc run vipd's image under a real kubelet in the lab
# (e2e/kubelet_test.go); buildah builds the image (make image) without a
# registry or a daemon; nsenter (util-linux) starts them in a node's
# network namespace.
DEB_PACKAGES := etcd-server iproute2 nftables iputils-ping arping ca-certificates \
	containerd runc buildah util-linux

.PHONY: build deps kube-assets test demo bench bench-failover bench-services bench-services-5000 bench-migration soak vet fmt clean root image manifests

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/vipd ./cmd/vipd

bin/vipd-lab: build
	$(GO) build -trimpath -o bin/vipd-lab ./cmd/vipd-lab

root:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make $(MAKECMDGOALS): must run as root: it installs packages and builds network namespaces." >&2; \
		echo "  Try: sudo env PATH=\"\$$PATH\" make $(MAKECMDGOALS)" >&2; \
		exit 1; \
	fi

# Idempotent, and quick when everything is present: apt runs only for a
# missing package, the Go build cache makes kube-assets a no-op.
deps: root
	@missing=(); \
	if command -v dpkg-query >/dev/null; then \
		for p in $(DEB_PACKAGES); do \
			[ "$$(dpkg-query -W -f='$${db:Status-Status}' "$$p" 2>/dev/null)" = installed ] || missing+=("$$p"); \
		done; \
		if [ $${#missing[@]} -gt 0 ]; then \
			echo "deps: installing $${missing[*]}"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -qq; \
			apt-get install -y -qq --no-install-recommends "$${missing[@]}"; \
			if [[ " $${missing[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null && \
				systemctl is-active --quiet etcd 2>/dev/null; then \
				echo "deps: stopping the system etcd the package started; the tests run their own"; \
				systemctl disable --now etcd || echo "deps: warning: could not stop the system etcd service" >&2; \
			fi; \
		fi; \
	else \
		for c in etcd ip nft ping arping containerd runc buildah nsenter; do command -v "$$c" >/dev/null || missing+=("$$c"); done; \
		if [ $${#missing[@]} -gt 0 ]; then \
			echo "deps: not a Debian system; install these commands yourself: $${missing[*]}" >&2; exit 1; \
		fi; \
	fi
	@command -v $(GO) >/dev/null || { echo "deps: no Go toolchain ($(GO)) on PATH; install Go 1.26 from https://go.dev/dl/" >&2; exit 1; }
	$(GO) mod download
	hack/kube-assets.sh >/dev/null

kube-assets:
	hack/kube-assets.sh

# The container image localhost/vipd:$(VERSION), built with buildah from the
# Dockerfile, also written to bin/vipd-$(VERSION).tar for
# `ctr -n k8s.io images import` on the nodes. Needs root (buildah).
image: root
	@command -v buildah >/dev/null || $(MAKE) deps
	@mkdir -p bin
	hack/image.sh $(VERSION) bin/vipd-$(VERSION).tar

# Regenerates deploy/*.yaml with `vipd manifest` (deploy/manifests_test.go
# holds the arguments and checks the files match).
manifests:
	$(GO) test ./deploy -run TestGenerated -update

test: deps
	$(GO) test -p 1 -count=1 -timeout 30m ./...

demo: deps bin/vipd-lab
	bin/vipd-lab demo --vipd bin/vipd

bench: bench-failover bench-services bench-migration

bench-failover: deps
	$(GO) test ./e2e -run '^$$' -bench 'BenchmarkFailover|BenchmarkAPIOutage' -benchtime 10x -timeout 60m

# Moving the control-plane VIP from kube-vip to vipd (docs/migration.md), ~3 min.
bench-migration: deps
	$(GO) test ./e2e -run '^$$' -bench BenchmarkMigration -benchtime 5x -timeout 30m

# The services benchmark, ~15 min; 5000x10 apart (bench-services-5000):
# on a 2-core machine it is at the edge: it reports its cost curve up to
# where it gives out, ~10 min (docs/benchmarks.md).
bench-services: deps
	$(GO) test ./e2e -run '^$$' -bench 'BenchmarkServices/(one-for-all|per-service)/(200x3|10x10|1000x10)$$' -benchtime 1x -timeout 60m

bench-services-5000: deps
	$(GO) test ./e2e -run '^$$' -bench 'BenchmarkServices/per-service/5000x10$$' -benchtime 1x -timeout 60m

# The chaos soak (docs/faults.md): 100 faults drawn at random, with the
# invariant checked after each; `make test` runs a short one (10 faults).
# SEED=<n> replays a run; FAULTS=<n> changes the count. About 25 minutes.
FAULTS ?= 100
soak: deps
	VIPD_SOAK_FAULTS=$(FAULTS) $(if $(SEED),VIPD_SOAK_SEED=$(SEED)) $(GO) test ./e2e -run '^TestSoak$$' -count=1 -v -timeout 90m

# The second vet covers the code only the e2e tests' binaries have
# (build tag vipd_testhooks).
vet:
	$(GO) vet ./...
	$(GO) vet -tags vipd_testhooks ./...

# Rewrites files in place and lists the ones it changed.
fmt:
	gofmt -l -w $$(git ls-files '*.go')

clean:
	rm -rf bin
