#!/usr/bin/env bash
# Installs what building and testing cadre needs, idempotently. Safe to run again.
# Today that is the Rust toolchain's rustfmt and clippy, the POSIX tools the tests run as
# supervised processes (sh, sleep, bash), and gVisor's runsc for the sandbox tests. Later parts add
# libclang-dev and MCP test servers here.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not installed; install Rust (stable, 1.88 or newer) first" >&2
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
if ! command -v runsc >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq runsc
  else
    echo "setup: runsc (gVisor) is missing; install it as root: apt-get install -y runsc" >&2
    exit 1
  fi
fi
