#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, checks formatting, lints and
# the API docs (no rustdoc warnings), then runs every unit, scenario, property and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# A real Kubernetes API server (etcd and kube-apiserver 1.20, built once into a cache outside
# the tree) for the tests of the kubernetes sandbox provider.
CADRE_KUBE_BIN=$(scripts/setup-kube.sh | tail -1)
export CADRE_KUBE_BIN
# A one-off build gains nothing from incremental state but its disk space.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The FoundationDB store is behind a feature (it links libfdb_c): checked and linted here,
# tested against a real server by scripts/test-foundationdb.sh where one is installed.
cargo clippy --workspace --all-targets --locked --features cadre/foundationdb -- -D warnings
cargo check --workspace --locked --features cadre/foundationdb
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo test --workspace --locked
cargo build -p cadre --locked
scripts/test-deploy.sh
scripts/test-foundationdb.sh
