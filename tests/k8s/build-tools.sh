#!/usr/bin/env bash
# Builds the Go tools of the Kubernetes test tier into .cache/bin, from their Go modules through
# the Go module proxy, at the versions pinned in tests/k8s/go.mod (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, etcd) and
# tests/k8s/helm/go.mod (helm). Called by `make tools` (so by `make setup`, `make test`, .ci/run).
#
# Cached: each binary is built as .cache/bin/NAME-VERSION with .cache/bin/NAME a symlink to it; a
# rerun skips a binary whose pinned version is already there. Go's own module and build caches
# are used, so a rebuild after a version bump (or in a fresh clone) is incremental.
#
# Adding a tool: one `build_tool` line at the bottom (a module dir holding a go.mod that requires
# it, the package path, the module whose version names the binary, and optional -ldflags).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/k8s"
BIN="$ROOT/.cache/bin"
mkdir -p "$BIN" "$ROOT/.cache/go"

# The newest `go` directive of the modules built here: KServe v0.20.0's go.mod says go 1.25.8
# (Kubernetes 1.34, helm and skaffold 1.24). GOTOOLCHAIN=local below: no toolchain is fetched, so
# an older Go would fail deep inside a build; say it here, in one line.
GO_MIN=1.25.8
if ! command -v go >/dev/null 2>&1; then
  echo "build-tools: 'go' is not on PATH; install Go >= $GO_MIN (https://go.dev/dl/) to build the Kubernetes tier's tools" >&2
  exit 1
fi
go_have="$(go env GOVERSION | sed 's/^go//')"
if [ "$(printf '%s\n%s\n' "$GO_MIN" "$go_have" | sort -V | head -1)" != "$GO_MIN" ]; then
  echo "build-tools: Go $go_have is older than $GO_MIN, which KServe v0.20.0 needs; install Go >= $GO_MIN (https://go.dev/dl/)" >&2
  exit 1
fi
# Go's module and build caches: the user's (shared by every clone on the machine, so a fresh
# clone, e.g. CI's, rebuilds incrementally) unless the caller sets them.
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
export GOCACHE="${GOCACHE:-$(go env GOCACHE)}"
export GOFLAGS="-trimpath -mod=readonly -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0


# One build at a time (two `make` runs in parallel would otherwise race on the same output).
exec 9>"$BIN/.build-tools.lock"
flock 9

# pinned_version MODDIR MODULE -> the version MODULE has in MODDIR/go.mod (read from the file, no network)
pinned_version() {
  awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$1/go.mod"
}

built=0
# build_tool NAME MODDIR PACKAGE MODULE [LDFLAGS]
build_tool() {
  local name="$1" moddir="$2" pkg="$3" module="$4" ldflags="${5:-}"
  local version
  version="$(pinned_version "$moddir" "$module")"
  if [ -z "$version" ]; then
    echo "build-tools: $module is not pinned in $moddir/go.mod" >&2
    exit 1
  fi
  local out="$BIN/$name-$version"
  if [ -x "$out" ]; then
    ln -sfn "$(basename "$out")" "$BIN/$name"
    echo "build-tools: $name $version already built ($out)"
    return 0
  fi
  # .ci/step says how long it took last time (or on a first run) and how much is left, every 20 s
  (cd "$moddir" && "$ROOT/.ci/step" "go-build-$name: building $name $version from $pkg (Go, nice -n 10)" \
    nice -n 10 go build -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv -f "$out.tmp" "$out"
  ln -sfn "$(basename "$out")" "$BIN/$name"
  built=$((built + 1))
}

total_start=$SECONDS

kube_version="$(pinned_version "$HERE" k8s.io/kubernetes)"
kube_minor="$(echo "$kube_version" | cut -d. -f2)"
# The version the API server reports on /version (helm reads it for .Capabilities.KubeVersion).
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$kube_version"
kube_ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
kube_ldflags+=" -X k8s.io/component-base/version.gitMinor=$kube_minor"
kube_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
build_tool kube-apiserver "$HERE" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes "$kube_ldflags"

# Namespace deletion, garbage collection and default ServiceAccounts need the controller manager.
build_tool kube-controller-manager "$HERE" k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes "$kube_ldflags"

# The node: scheduler, kubelet and kube-proxy make Pods run (tests/k8s/node.py), same pin and ldflags.
build_tool kube-scheduler "$HERE" k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes "$kube_ldflags"
build_tool kubelet "$HERE" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes "$kube_ldflags"
build_tool kube-proxy "$HERE" k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes "$kube_ldflags"
# kubectl of the same version (the tests' `kubectl apply/explain`; no Debian package has one)
build_tool kubectl "$HERE" k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes "$kube_ldflags"

# etcd at the version kube-apiserver itself pins (go.etcd.io/etcd/server/v3 in the same go.mod).
build_tool etcd "$HERE" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3

helm_version="$(pinned_version "$HERE/helm" helm.sh/helm/v3)"
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$helm_version"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
# `helm template` / `helm lint` without a cluster assume the Kubernetes version the harness runs.
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kube_minor"
done
build_tool helm "$HERE/helm" helm.sh/helm/v3/cmd/helm helm.sh/helm/v3 "$helm_ldflags"

# ---------------------------------------------------------------------------------------------
# The KServe controller (cmd/manager), run as a pod by tests/k8s/kserve.py. Its version is the
# one of the KServe CRDs: read from tests/k8s/crd-sources.yaml, the only place it is written.
# Built inside the kserve module itself (its go.mod `replace`s pin k8s.io to v0.34.x and
# controller-runtime to v0.22.5; they apply only when kserve is the main module), so not through
# a wrapper go.mod like the tools above. Static (CGO_ENABLED=0): the image holds nothing else.
kserve_version="$(awk '$1 == "-" && $2 == "module:" {m = $3} m == "github.com/kserve/kserve" && $1 == "version:" {print $2; exit}' "$HERE/crd-sources.yaml")"
if [ -z "$kserve_version" ]; then
  echo "build-tools: github.com/kserve/kserve has no version in $HERE/crd-sources.yaml" >&2
  exit 1
fi
kserve_out="$BIN/kserve-manager-$kserve_version"
if [ -x "$kserve_out" ]; then
  ln -sfn "$(basename "$kserve_out")" "$BIN/kserve-manager"
  echo "build-tools: kserve-manager $kserve_version already built ($kserve_out)"
else
  kserve_dir="$(GOFLAGS=-mod=mod go mod download -json "github.com/kserve/kserve@$kserve_version" | awk -F'"' '$2 == "Dir" {print $4}')"
  if [ ! -f "$kserve_dir/go.mod" ]; then
    echo "build-tools: cannot fetch github.com/kserve/kserve@$kserve_version (go mod download)" >&2
    exit 1
  fi
  # -modcacherw: the dependencies it downloads stay removable (the module dir itself is read-only).
  (cd "$kserve_dir" && GOFLAGS="$GOFLAGS -modcacherw" "$ROOT/.ci/step" \
    "go-build-kserve-manager: building the KServe controller $kserve_version (Go, nice -n 10)" \
    nice -n 10 go build -ldflags "-s -w" -o "$kserve_out.tmp" ./cmd/manager)
  mv -f "$kserve_out.tmp" "$kserve_out"
  ln -sfn "$(basename "$kserve_out")" "$BIN/kserve-manager"
  built=$((built + 1))
fi

# ---------------------------------------------------------------------------------------------
# Tools built inside their own Go module (their go.mod's replace lines apply only there), each
# into .cache/<name>/<name>-<version>, not .cache/bin, and pinned by two lines of the Python
# module that runs it, the one place its version is written: <NAME>_VERSION = "v..." and
# <NAME>_MODULE = "module path" (or "path@module version" when that differs from the version).
#   build_in_module NAME PYFILE PACKAGE WHAT [LDFLAGS]   (VERSION in LDFLAGS: the version, no v)
build_in_module() {
  local name="$1" py="$2" pkg="$3" what="$4" ldflags="${5:-}"
  local upper version module out dir
  upper="$(echo "$name" | tr '[:lower:]' '[:upper:]')"
  version="$(sed -n "s/^${upper}_VERSION = \"\(v[^\"]*\)\".*/\1/p" "$py")"
  module="$(sed -n "s/^${upper}_MODULE = \"\([^\"]*\)\".*/\1/p" "$py")"
  if [ -z "$version" ] || [ -z "$module" ]; then
    echo "build-tools: no ${upper}_VERSION / ${upper}_MODULE in $py" >&2
    exit 1
  fi
  case "$module" in *@*) ;; *) module="$module@$version" ;; esac
  out="$ROOT/.cache/$name/$name-$version"
  if [ -x "$out" ]; then
    echo "build-tools: $name $version already built ($out)"
    return
  fi
  mkdir -p "$(dirname "$out")"
  dir="$(GOFLAGS=-mod=mod go mod download -json "$module" | awk -F'"' '$2 == "Dir" {print $4}')"
  if [ ! -f "$dir/go.mod" ]; then
    echo "build-tools: cannot fetch $module (go mod download)" >&2
    exit 1
  fi
  (cd "$dir" && GOFLAGS="$GOFLAGS -modcacherw" "$ROOT/.ci/step" \
    "go-build-$name: building $what $version (Go, nice -n 10)" \
    nice -n 10 go build -ldflags "-s -w ${ldflags//VERSION/${version#v}}" -o "$out.tmp" "$pkg")
  mv -f "$out.tmp" "$out"
  built=$((built + 1))
}

# Prometheus with Kubernetes service discovery (Debian's 2.42 has none), run inside the node's
# netns by tests/k8s/pod_prometheus.py (the local stack runs Debian's `prometheus` from PATH).
build_in_module prometheus "$HERE/pod_prometheus.py" ./cmd/prometheus \
  "Prometheus with Kubernetes discovery" "-X github.com/prometheus/common/version.Version=VERSION"
# Traefik, the Gateway API data plane of the real-pods tests (tests/k8s/gateway.py runs it in the
# node's netns).
build_in_module traefik "$HERE/gateway.py" ./cmd/traefik \
  "Traefik, the Gateway API data plane," "-X github.com/traefik/traefik/v3/pkg/version.Version=VERSION"
# CoreDNS, the cluster DNS of the single-node cluster (tests/k8s/dns.py; node.py runs it in the
# node's netns).
build_in_module coredns "$HERE/dns.py" . "CoreDNS, the cluster DNS,"

# ---------------------------------------------------------------------------------------------
# skaffold (added by the packaging work, issue 5; owner of this block: helm/ + skaffold.yaml).
# Validates skaffold.yaml with `skaffold diagnose` / `skaffold render --offline`
# (tests/e2e/test_helm_skaffold.py). Pinned in tests/k8s/skaffold/go.mod, a wrapper module that
# repeats Skaffold's own `replace` lines (so `go install ...@version` cannot be used).
# Cost measured here: 8 min of CPU (37 min wall on the shared 2-core machine at nice 15, -p 1).
skaffold_version="$(pinned_version "$HERE/skaffold" github.com/GoogleContainerTools/skaffold/v2)"
skaffold_ldflags="-X github.com/GoogleContainerTools/skaffold/v2/pkg/skaffold/version.version=$skaffold_version"
build_tool skaffold "$HERE/skaffold" github.com/GoogleContainerTools/skaffold/v2/cmd/skaffold \
  github.com/GoogleContainerTools/skaffold/v2 "$skaffold_ldflags"
echo "build-tools: skaffold ready ($BIN/skaffold)"

echo "build-tools: done in $((SECONDS - total_start)) s ($built built); binaries in $BIN"
