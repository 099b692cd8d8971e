# vipd's container image: one static binary on an empty base.
#
# Two stages. The first builds vipd with a Go toolchain image (GO_IMAGE);
# the second is FROM scratch and holds only the binary, so the image has no
# shell, no libc, nothing to patch but vipd itself.
#
#   make image                    # here: buildah, no registry, no daemon
#   docker build -t vipd:dev .    # elsewhere, with the official Go image
#
# Every RUN is in exec form (no shell), so GO_IMAGE may be the official
# golang image or the shell-less toolchain image hack/image.sh makes from
# the host's Go.
ARG GO_IMAGE=docker.io/library/golang:1.26

FROM ${GO_IMAGE} AS build
ARG VERSION=dev
ENV CGO_ENABLED=0 \
    GOFLAGS="-trimpath -buildvcs=false -ldflags=-X=main.version=${VERSION}"
WORKDIR /src
COPY go.mod go.sum ./
RUN ["go", "mod", "download"]
COPY cmd ./cmd
COPY internal ./internal
RUN ["go", "build", "-o", "/out/vipd", "./cmd/vipd"]

FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="vipd" \
      org.opencontainers.image.description="Highly available layer-2 VIPs for bare-metal Kubernetes: control-plane endpoint and LoadBalancer Services" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/vipd /usr/local/bin/vipd
# kube-vip manifests run `args: ["manager"]` against an entrypoint of vipd.
ENTRYPOINT ["/usr/local/bin/vipd"]
