#!/usr/bin/env bash
# Compares runsc builds and flags in cadre's own benchmarks, in one sitting:
#   scripts/bench-runsc.sh NAME=RUNSC[,FLAG...] ...
# e.g. scripts/bench-runsc.sh 2022=/opt/runsc-2022/runsc 2024=/usr/bin/runsc \
#        2024-exclusive=/usr/bin/runsc,--file-access-mounts=exclusive
# Each variant runs `cadre bench placement`, `bench tools` and `bench workspace` (3 rounds, its
# medians) ROUNDS times (default 3), interleaved so that drift of the machine hits every variant
# alike. Prints one JSON object per run: {"variant", "bench", "report"}. Needs root, runsc and
# scripts/setup.sh (for the MCP server of `bench tools`). Old builds of runsc can be had with
# `apt-get download runsc=VERSION && dpkg -x runsc_*.deb DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
cargo build --release -q -p cadre
cadre=$PWD/target/release/cadre
wrappers=$(mktemp -d)
trap 'rm -rf "${wrappers}"' EXIT
names=()
for variant in "$@"; do
  name=${variant%%=*}
  IFS=, read -r -a parts <<<"${variant#*=}"
  mkdir -p "${wrappers}/${name}"
  # The provider runs the `runsc` it finds on PATH: a wrapper puts the flags before each command.
  printf '#!/bin/sh\nexec %q %s "$@"\n' "${parts[0]}" "${parts[*]:1}" >"${wrappers}/${name}/runsc"
  chmod +x "${wrappers}/${name}/runsc"
  names+=("${name}")
done
for round in $(seq "${rounds}"); do
  for name in "${names[@]}"; do
    for bench in placement tools workspace; do
      echo "bench-runsc: round ${round}, ${name}, ${bench}" >&2
      report=$(PATH="${wrappers}/${name}:${PATH}" "${cadre}" bench "${bench}" -o json 2>/dev/null)
      printf '{"variant":"%s","bench":"%s","report":%s}\n' "${name}" "${bench}" "${report}"
    done
  done
done
