#!/usr/bin/env bash
# Runs a cadre node on its embedded defaults with examples/cadre.yaml, shows its supervision
# tree, kills one supervised process to show a rest_for_one restart, runs an exec with the
# built-in echo agent, prints its durable log and forks it, then lists the node's tools, calls
# one of the MCP server's, activates a skill into a conversation's workspace and runs its script
# there (in a gVisor sandbox), and runs two execs of a process agent in one conversation (a
# harness in that conversation's sandbox, its tool calls journaled). The node keeps serving until
# Ctrl-C (or exits after the demo with --once), with its web console and Prometheus metrics.
#
#   ./scripts/run.sh [--once] [CONFIG]        listen address: $CADRE_LISTEN (127.0.0.1:7400)
#                                             console: $CADRE_CONSOLE (127.0.0.1:7480)
#                                             metrics: $CADRE_METRICS (127.0.0.1:9464)
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
if [ "${1:-}" = "--once" ]; then once=1; shift; fi
config=${1:-examples/cadre.yaml}
addr=${CADRE_LISTEN:-127.0.0.1:7400}
console=${CADRE_CONSOLE:-127.0.0.1:7480}
metrics=${CADRE_METRICS:-127.0.0.1:9464}

scripts/setup.sh
echo "==> building cadre (release)"
cargo build --release --locked -p cadre
cadre=target/release/cadre
export CADRE_SERVER="http://${addr}"

echo "==> cadre serve --config ${config} --listen ${addr} --console-listen ${console} --metrics-listen ${metrics}"
"${cadre}" serve --config "${config}" --listen "${addr}" --console-listen "${console}" \
  --metrics-listen "${metrics}" &
node=$!
trap 'kill -TERM "${node}" 2>/dev/null || true; wait "${node}" 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  "${cadre}" tree >/dev/null 2>&1 && break
  kill -0 "${node}" 2>/dev/null || { echo "cadre serve exited; see the log above" >&2; exit 1; }
  sleep 0.1
done

echo "==> cadre tree"
"${cadre}" tree
pid=$("${cadre}" tree -o json | python3 -c '
import json, sys
def walk(n):
    yield n
    for c in n["children"]:
        yield from walk(c)
print(next(n["pid"] for n in walk(json.load(sys.stdin)["root"]) if n["path"] == "root/pipeline/transform"))
' 2>/dev/null || true)
if [ -n "${pid}" ]; then
  echo "==> kill -KILL ${pid} (root/pipeline/transform): rest_for_one restarts it and sink"
  kill -KILL "${pid}"
  sleep 0.5
  "${cadre}" tree
fi

echo "==> cadre exec --agent echo --input 'hello, cadre'   (a durable exec: every event is in the log)"
tmp=$(mktemp)
"${cadre}" exec --agent echo --input "hello, cadre" 2> "${tmp}"
cat "${tmp}"
conversation=$(sed -n 's/^conversation=\([^ ]*\) seq=.*/\1/p' "${tmp}")
rm -f "${tmp}"
echo "==> cadre conversations log ${conversation}"
"${cadre}" conversations log "${conversation}"
echo "==> cadre fork --conversation ${conversation} --at-seq 1, then continue the branch"
branch=$("${cadre}" fork --conversation "${conversation}" --at-seq 1 -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["conversation_id"])')
"${cadre}" exec --agent echo --input "a different turn" --conversation "${branch}"

echo "==> cadre tools ls   (an MCP server in a gVisor sandbox, skills, built-in workspace tools)"
"${cadre}" tools ls
echo "==> cadre tools call everything.get-sum --args '{\"a\":2,\"b\":40}'   (journaled in cadre.tools)"
"${cadre}" tools call everything.get-sum --args '{"a":2,"b":40}'
echo "==> the csv-summary skill in conversation demo's workspace (a sandbox of its own)"
"${cadre}" tools call skills.activate_skill --args '{"name":"csv-summary"}' --conversation demo | head -3
"${cadre}" tools call workspace.write_file --conversation demo \
  --args '{"path":"fruit.csv","content":"name,qty,price\napple,3,1.5\npear,5,2\n"}'
"${cadre}" tools call workspace.run --approve --conversation demo \
  --args '{"command":"sh skills/csv-summary/scripts/summarize.sh fruit.csv"}'

echo "==> cadre exec --agent notes (a process agent in conversation notes-demo's sandbox), twice"
"${cadre}" exec --agent notes --conversation notes-demo --input "buy milk"
"${cadre}" exec --agent notes --conversation notes-demo --input "call the plumber"
echo "==> cadre conversations log notes-demo   (outputs and tool calls, journaled)"
"${cadre}" conversations log notes-demo
echo "==> GET http://${metrics}/metrics   (the execs counted; the console is at http://${console}/ui)"
python3 -c '
import sys, urllib.request
for line in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines():
    if line.startswith(("cadre_execs_", "cadre_supervisor_restarts_total")):
        print(line)
' "http://${metrics}/metrics"

if [ "${once}" = 1 ]; then
  echo "==> stopping the node (SIGTERM: reverse start order)"
  exit 0
fi
echo "==> node running at ${addr}; try 'cadre tree -o json', the console at http://${console}/ui and http://${metrics}/metrics. Ctrl-C stops it."
wait "${node}"
