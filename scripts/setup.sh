#!/usr/bin/env bash
# Installs what building and testing cadre needs, idempotently. Safe to run again.
# Today that is the Rust toolchain's rustfmt and clippy, libclang (for the FoundationDB
# feature's bindings), kubernetes-validate for deploy/ (a real API server for the Kubernetes
# tests is scripts/setup-kube.sh's), the POSIX tools the tests run as
# supervised processes (sh, sleep, bash), gVisor's runsc for the sandbox tests, and the real MCP
# servers the tool tests drive and gRPC for the Python example agent (from npm and PyPI, under $CADRE_MCP_DIR, default
# /usr/local/lib/cadre-mcp: below /usr, so that gVisor sandboxes see them).
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed; install Rust (stable, 1.89 or newer) first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
      rustup component add "${component}"
    fi
  done
fi
missing=()
for tool in sh sleep bash; do
  command -v "${tool}" >/dev/null 2>&1 || missing+=("${tool}")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq coreutils dash bash
  else
    echo "setup: missing ${missing[*]}; install coreutils, dash and bash" >&2
    exit 1
  fi
fi

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq "$@"
  else
    echo "setup: install $* (as root: apt-get install -y $*)" >&2
    exit 1
  fi
}

# gVisor's runsc, 2024 or newer: bookworm's own build (2022) refuses a syscall that `ls PATH`,
# `stat` and `find` make, and has only the slow ptrace platform; bookworm-backports has a 2024
# build (systrap). The backports suite is added for runsc alone: its priority stays below the
# release's, so nothing else is taken from it.
runsc_wanted=0.0~20240729
runsc_have=$(dpkg-query -W -f='${Version}' runsc 2>/dev/null || true)
if ! command -v runsc >/dev/null 2>&1 || ! dpkg --compare-versions "${runsc_have:-0}" ge "${runsc_wanted}"; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: install runsc ${runsc_wanted} or newer (Debian bookworm-backports has it)" >&2
    exit 1
  fi
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "${codename}" = bookworm ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      >/etc/apt/sources.list.d/bookworm-backports.sources
  fi
  apt-get update -qq
  if [ "${codename}" = bookworm ]; then
    apt-get install -y -qq -t bookworm-backports runsc
  else
    apt-get install -y -qq runsc
  fi
fi

# libclang, for the FoundationDB client's bindings (bindgen) that `--features foundationdb`
# builds.
if ! ldconfig -p 2>/dev/null | grep -q "libclang[-.0-9]*\.so"; then
  apt_install libclang-dev
fi

# The observability tests: a real Prometheus scrapes a node, and headless Chromium (driven
# through chromedriver's WebDriver) opens the web console.
for tool in prometheus chromium chromedriver; do
  if ! command -v "${tool}" >/dev/null 2>&1; then
    apt_install prometheus chromium chromium-driver
    break
  fi
done

mcp_dir=${CADRE_MCP_DIR:-/usr/local/lib/cadre-mcp}
everything_version=2026.8.31
time_version=2026.10.19
everything="${mcp_dir}/npm/node_modules/@modelcontextprotocol/server-everything"
if ! grep -qs "\"version\": \"${everything_version}\"" "${everything}/package.json"; then
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  echo "setup: installing @modelcontextprotocol/server-everything@${everything_version}"
  npm install --silent --no-audit --no-fund --prefix "${mcp_dir}/npm" \
    "@modelcontextprotocol/server-everything@${everything_version}"
fi
# Debian's python3 (in /usr/bin), not one under /root: the sandbox sees only /usr and /bin.
if ! "${mcp_dir}/time/bin/python3" -c "import mcp_server_time" >/dev/null 2>&1 ||
  [ "$("${mcp_dir}/time/bin/pip" show mcp-server-time 2>/dev/null | sed -n 's/^Version: //p')" != "${time_version}" ]; then
  [ -x /usr/bin/python3 ] || apt_install python3
  /usr/bin/python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
  rm -rf "${mcp_dir}/time"
  /usr/bin/python3 -m venv "${mcp_dir}/time" || { apt_install python3-venv; /usr/bin/python3 -m venv "${mcp_dir}/time"; }
  echo "setup: installing mcp-server-time==${time_version}"
  "${mcp_dir}/time/bin/pip" install -q --disable-pip-version-check "mcp-server-time==${time_version}"
fi
# kubernetes-validate (and PyYAML), for the checks of deploy/ (scripts/test-deploy.sh).
validate_version=1.37.0
if [ "$("${mcp_dir}/deploy/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "${validate_version}" ]; then
  [ -x /usr/bin/python3 ] || apt_install python3
  rm -rf "${mcp_dir}/deploy"
  /usr/bin/python3 -m venv "${mcp_dir}/deploy" || { apt_install python3-venv; /usr/bin/python3 -m venv "${mcp_dir}/deploy"; }
  echo "setup: installing kubernetes-validate==${validate_version}"
  "${mcp_dir}/deploy/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==${validate_version}"
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup: kubectl 1.27 or newer (with kustomize) is needed for the checks of deploy/" >&2
  exit 1
fi
# gRPC for Python, for the example remote agent in examples/remote-agent-python.
grpc_version=1.85.1
if [ "$("${mcp_dir}/grpc/bin/pip" show grpcio-tools 2>/dev/null | sed -n 's/^Version: //p')" != "${grpc_version}" ]; then
  [ -x /usr/bin/python3 ] || apt_install python3
  rm -rf "${mcp_dir}/grpc"
  /usr/bin/python3 -m venv "${mcp_dir}/grpc" || { apt_install python3-venv; /usr/bin/python3 -m venv "${mcp_dir}/grpc"; }
  echo "setup: installing grpcio==${grpc_version} and grpcio-tools==${grpc_version}"
  "${mcp_dir}/grpc/bin/pip" install -q --disable-pip-version-check \
    "grpcio==${grpc_version}" "grpcio-tools==${grpc_version}"
fi
# The OTLP trace receiver of the tracing tests (tests/fixtures/otlp_receiver.py).
otlp_proto_version=1.45.2
if [ "$("${mcp_dir}/grpc/bin/pip" show opentelemetry-proto 2>/dev/null | sed -n 's/^Version: //p')" != "${otlp_proto_version}" ]; then
  echo "setup: installing opentelemetry-proto==${otlp_proto_version}"
  "${mcp_dir}/grpc/bin/pip" install -q --disable-pip-version-check "opentelemetry-proto==${otlp_proto_version}"
fi
