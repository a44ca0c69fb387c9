#!/usr/bin/env bash
# The tests against a real FoundationDB 7.3: starts a one-process cluster on 127.0.0.1 in a
# temp dir (memory engine), runs the Store conformance suite, the fault and lease tests and
# the failover tests (three nodes on one FoundationDB: SIGKILL and SIGSTOP of the controller,
# 20 controller kills in a row, `cadre store copy`) with `--features foundationdb`, prints
# `bench eventlog` on it, and stops it.
#
# FoundationDB's official packages put fdbserver, fdbcli and libfdb_c.so on the machine; they
# are looked for in $CADRE_FDB_DIR (its bin/, sbin/ and lib/, or itself), then on PATH,
# /usr/sbin and the linker's paths. Without them this prints one line saying what is missing
# and exits 0: no registry these machines reach has FoundationDB.
set -euo pipefail
cd "$(dirname "$0")/.."

find_program() {
  local name=$1 dir
  for dir in ${CADRE_FDB_DIR:+"$CADRE_FDB_DIR/bin" "$CADRE_FDB_DIR/sbin" "$CADRE_FDB_DIR"}; do
    [ -x "$dir/$name" ] && { echo "$dir/$name"; return; }
  done
  command -v "$name" 2>/dev/null && return
  [ -x "/usr/sbin/$name" ] && { echo "/usr/sbin/$name"; return; }
  return 0
}

find_library() {
  local dir
  for dir in ${CADRE_FDB_DIR:+"$CADRE_FDB_DIR/lib" "$CADRE_FDB_DIR"} /usr/lib /usr/lib64 /usr/local/lib; do
    [ -e "$dir/libfdb_c.so" ] && { echo "$dir"; return; }
  done
  ldconfig -p 2>/dev/null | awk '/libfdb_c\.so / {print $NF; exit}' | xargs -r dirname
}

fdbserver=$(find_program fdbserver)
fdbcli=$(find_program fdbcli)
libdir=$(find_library)
missing=()
[ -n "$fdbserver" ] || missing+=(fdbserver)
[ -n "$fdbcli" ] || missing+=(fdbcli)
[ -n "$libdir" ] || missing+=(libfdb_c.so)
if ((${#missing[@]})); then
  echo "test-foundationdb: skipped: FoundationDB 7.3 is not installed here (missing ${missing[*]}; install its packages or set CADRE_FDB_DIR)"
  exit 0
fi

scratch=$(mktemp -d /tmp/cadre-fdb-XXXXXX)
fdb_pid=
cleanup() {
  if [ -n "$fdb_pid" ]; then
    kill "$fdb_pid" 2>/dev/null || true
    wait "$fdb_pid" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cluster_file="$scratch/fdb.cluster"
echo "cadre:test@127.0.0.1:${port}" >"$cluster_file"
mkdir -p "$scratch/data" "$scratch/logs"
"$fdbserver" --public_address "127.0.0.1:${port}" --listen_address public \
  --cluster_file "$cluster_file" --datadir "$scratch/data" --logdir "$scratch/logs" &
fdb_pid=$!
"$fdbcli" -C "$cluster_file" --timeout 30 --exec "configure new single memory" >/dev/null
for _ in $(seq 1 60); do
  if "$fdbcli" -C "$cluster_file" --timeout 5 --exec "status minimal" 2>/dev/null | grep -q "available"; then
    break
  fi
  sleep 1
done
"$fdbcli" -C "$cluster_file" --timeout 5 --exec "status minimal"
echo "test-foundationdb: FoundationDB $("$fdbserver" --version | head -1) at 127.0.0.1:${port}"

export CADRE_TEST_FDB_CLUSTER_FILE="$cluster_file"
export LD_LIBRARY_PATH="${libdir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# A target dir of its own: these builds link libfdb_c, the others must not.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/foundationdb"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=${libdir}"
features=(--features cadre/foundationdb)
# The nodes the failover tests start are this build of cadre.
cargo build --locked "${features[@]}" -p cadre
export CADRE_BIN="$CARGO_TARGET_DIR/debug/cadre"

cargo test --locked "${features[@]}" -p cadre-cluster --test store_conformance --test faults
cargo test --locked "${features[@]}" -p cadre-tests --test cluster -- --include-ignored \
  shared_store_ store_copy_
cargo run --locked --release "${features[@]}" -p cadre -- \
  bench eventlog --store "foundationdb:${cluster_file}" --events 100000 -o json
echo "test-foundationdb: passed"
