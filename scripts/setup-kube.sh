#!/usr/bin/env bash
# Builds a real Kubernetes API server for the tests, once, into a cache outside the tree, and
# installs etcd: Debian's `etcd-server` (3.4) and `kube-apiserver` 1.20.2 built from Debian's
# `kubernetes` source package (vendored Go modules, Debian's Go 1.19, GOPATH mode). Prints the
# directory holding `kube-apiserver` and `etcd` on its last line. Idempotent: a built server is
# kept (delete $CADRE_KUBE_CACHE to build again).
#
# Three fixes make 1.20's tree build and run on Go 1.19: the vendored modern-go/reflect2 1.0.1
# crashes on Go >= 1.18 (Debian's 1.0.2 replaces it); pkg/generated/openapi is generated (it is
# git-ignored upstream); and the version is stamped into both version packages, else the server
# says v0.0.0 at /version (and clients refuse it).
set -euo pipefail

cache=${CADRE_KUBE_CACHE:-/var/cache/cadre/kube-1.20.2}
bin="${cache}/bin"
version=v1.20.2

if [ -x "${bin}/etcd" ] && [ "$("${bin}/kube-apiserver" --version 2>/dev/null)" = "Kubernetes ${version}" ]; then
  echo "${bin}"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-kube: needs root and apt-get (Debian bookworm) to build kube-apiserver" >&2
  exit 1
fi

echo "setup-kube: installing etcd-server, Go 1.19 and the kubernetes source package" >&2
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if ! grep -rqs "^Types: deb-src" /etc/apt/sources.list.d/ && ! grep -qs "^deb-src" /etc/apt/sources.list; then
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "${codename:-bookworm}" >/etc/apt/sources.list.d/cadre-deb-src.sources
fi
apt-get update -qq
apt-get install -y -qq etcd-server golang-1.19-go golang-github-modern-go-reflect2-dev dpkg-dev openssl >/dev/null

mkdir -p "${bin}"
ln -sf "$(command -v etcd)" "${bin}/etcd"

src="${cache}/src"
tree="${src}/gopath/src/k8s.io/kubernetes"
if [ ! -d "${tree}/vendor" ]; then
  rm -rf "${src}"
  mkdir -p "${src}/gopath/src/k8s.io"
  (cd "${src}" && apt-get source -qq --download-only kubernetes >/dev/null && dpkg-source -x --skip-patches ./kubernetes_*.dsc pkg >/dev/null)
  mv "${src}/pkg" "${tree}"
fi

export GOROOT=/usr/lib/go-1.19
export PATH="${GOROOT}/bin:${PATH}"
export GOPATH="${src}/gopath"
export GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
export GOCACHE="${cache}/gocache"
cd "${tree}"

# reflect2 1.0.1 reads runtime internals that Go 1.18 changed; 1.0.2 (Debian's) does not.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2

openapi=pkg/generated/openapi/zz_generated.openapi.go
if [ ! -s "${openapi}" ]; then
  echo "setup-kube: generating ${openapi}" >&2
  go build -o "${cache}/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  inputs=$(sed -n 's/^[[:space:]]*--input-dirs[[:space:]]*//p' Makefile.generated_files | head -1)
  if [ -z "${inputs}" ]; then
    # The list the Makefile builds: every package tagged for openapi-gen, plus the fixed ones.
    inputs=$(grep -rl --include=doc.go '+k8s:openapi-gen=true' pkg/apis staging/src/k8s.io vendor/k8s.io 2>/dev/null \
      | xargs -n1 dirname | sed -e 's#^staging/src/##' -e 's#^vendor/##' -e 's#^pkg/#k8s.io/kubernetes/pkg/#' | sort -u | paste -sd, -)
    inputs="${inputs},k8s.io/apimachinery/pkg/apis/meta/v1,k8s.io/apimachinery/pkg/runtime,k8s.io/apimachinery/pkg/version,k8s.io/apimachinery/pkg/api/resource,k8s.io/apimachinery/pkg/util/intstr"
  fi
  "${cache}/openapi-gen" --input-dirs "${inputs}" --output-package k8s.io/kubernetes/pkg/generated/openapi \
    --output-base "${GOPATH}/src" --go-header-file hack/boilerplate/boilerplate.generatego.txt \
    --output-file-base zz_generated.openapi --report-filename /dev/null
fi

echo "setup-kube: building kube-apiserver ${version} (about 3 minutes on 2 cores)" >&2
# In GOPATH mode the version packages are the vendored copies.
vendored=k8s.io/kubernetes/vendor/k8s.io
stamp=""
for pkg in component-base/version client-go/pkg/version; do
  stamp="${stamp} -X ${vendored}/${pkg}.gitVersion=${version} -X ${vendored}/${pkg}.gitMajor=1 -X ${vendored}/${pkg}.gitMinor=20 -X ${vendored}/${pkg}.gitTreeState=clean"
done
go build -ldflags "-s -w ${stamp}" -o "${bin}/kube-apiserver.tmp" ./cmd/kube-apiserver
mv "${bin}/kube-apiserver.tmp" "${bin}/kube-apiserver"
echo "${bin}"
