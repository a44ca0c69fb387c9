#!/usr/bin/env bash
# Checks deploy/: every overlay renders with kustomize, every rendered object (and the worker
# pod a node makes, `cadre config worker-pod`) validates with kubernetes-validate --strict for
# Kubernetes 1.30, the FoundationDBCluster validates against the operator's CRD
# (../shared/k8s/crds), and the policies of deploy/tests/policy.py hold. Needs kubectl (with
# kustomize), kubernetes-validate in the venv scripts/setup.sh makes, and the cadre binary
# ($CADRE_BIN, default target/debug/cadre).
set -euo pipefail
cd "$(dirname "$0")/.."

cadre=${CADRE_BIN:-target/debug/cadre}
tools=${CADRE_MCP_DIR:-/usr/local/lib/cadre-mcp}/deploy/bin
export PATH="${tools}:${PATH}"
crd=${CADRE_FDB_CRD:-../shared/k8s/crds/apps.foundationdb.org_foundationdbclusters.yaml}
kube_version=1.30.0
for need in kubectl kubernetes-validate python3 "${cadre}"; do
  command -v "${need}" >/dev/null 2>&1 || { echo "test-deploy: ${need} is missing (scripts/setup.sh)" >&2; exit 1; }
done
[ -f "${crd}" ] || { echo "test-deploy: no FoundationDB CRD at ${crd}" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "${tmp}"' EXIT

for overlay in deploy/overlays/*/; do
  name=$(basename "${overlay}")
  kubectl kustomize "${overlay}" >"${tmp}/${name}.yaml"
  echo "test-deploy: ${name}: $(grep -c '^kind:' "${tmp}/${name}.yaml") objects"
done

# The base config, with its mounted files made here: it must pass `cadre config check`, and
# it gives the worker pod.
node="${tmp}/node"
mkdir -p "${node}"
"${cadre}" certs init "${node}/certs" >/dev/null
head -c 32 /dev/urandom | base64 >"${node}/cookie"
sed -e "s#/etc/cadre/tls#${node}/certs#g" -e "s#/etc/cadre/cookie/cookie#${node}/cookie#" \
  deploy/base/cadre.yaml >"${node}/cadre.yaml"
"${cadre}" config check "${node}/cadre.yaml"
"${cadre}" config worker-pod "${node}/cadre.yaml" -o json >"${node}/worker-pod.json"
"${cadre}" config worker-pod "${node}/cadre.yaml" >"${tmp}/worker-pod.yaml"

# Strict schema validation; only the operator's FoundationDBCluster has no built-in schema
# (it is checked against the CRD by policy.py).
out=$(kubernetes-validate --strict --quiet -k "${kube_version}" "${tmp}"/*.yaml 2>&1) || {
  echo "${out}" >&2
  exit 1
}
unexpected=$(echo "${out}" | grep -v "Couldn't find schema for kind FoundationDBCluster" | grep . || true)
if [ -n "${unexpected}" ]; then
  echo "${unexpected}" >&2
  exit 1
fi
echo "test-deploy: kubernetes-validate --strict (${kube_version}): ok"

python3 deploy/tests/policy.py "${node}/worker-pod.json" "${crd}" "${tmp}"/single-node.yaml "${tmp}"/production.yaml
