#!/usr/bin/env python3
"""Policy checks over rendered manifests (kustomize output) and the node's worker pod.

Usage: policy.py WORKER_POD.json CRD.yaml OVERLAY.yaml...

Each overlay's objects, plus the worker pod `cadre config worker-pod` prints, must hold to:
- pods: never privileged, no hostPath/hostNetwork/hostPID/hostIPC, non-root, no privilege
  escalation, all capabilities dropped, seccomp RuntimeDefault;
- worker pods: the gVisor runtime class, no service account token;
- containers: resources (memory request and limit, cpu request), and the probes that apply
  (a node: startup, liveness and readiness; a worker: readiness);
- RBAC: only the node's Role, with exactly the verbs it needs, in its namespace; no wildcard,
  no cluster scope;
- a FoundationDBCluster: valid against the operator's CRD, unknown fields refused.
It also checks itself: each policy must reject an object broken on purpose.
"""

import copy
import json
import sys

import yaml

NODE_RULES = [
    {"apiGroups": [""], "resources": ["pods"],
     "verbs": ["create", "delete", "get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]
POD_KINDS = {"Pod", "StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job"}


def pod_spec(obj):
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] in POD_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def component(obj):
    if obj["kind"] == "Pod":
        labels = obj["metadata"].get("labels", {})
    else:
        labels = obj["spec"]["template"]["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component")


def check_pod(obj, where):
    errors = []
    spec = pod_spec(obj)
    if spec is None:
        return errors
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            errors.append(f"{where}: {field} is set")
    for volume in spec.get("volumes", []):
        if "hostPath" in volume:
            errors.append(f"{where}: volume {volume['name']} is a hostPath")
    pod_sc = spec.get("securityContext", {})
    if not pod_sc.get("runAsNonRoot"):
        errors.append(f"{where}: securityContext.runAsNonRoot is not true")
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        errors.append(f"{where}: seccompProfile is not RuntimeDefault")
    role = component(obj)
    if role == "worker":
        if spec.get("runtimeClassName") != "gvisor":
            errors.append(f"{where}: a worker pod without runtimeClassName gvisor")
        if spec.get("automountServiceAccountToken") is not False:
            errors.append(f"{where}: a worker pod mounts a service account token")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        cwhere = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            errors.append(f"{cwhere}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{cwhere}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            errors.append(f"{cwhere}: capabilities not all dropped")
        if sc.get("capabilities", {}).get("add"):
            errors.append(f"{cwhere}: adds capabilities")
        resources = c.get("resources", {})
        if "memory" not in resources.get("limits", {}):
            errors.append(f"{cwhere}: no memory limit")
        if not {"memory", "cpu"} <= set(resources.get("requests", {})):
            errors.append(f"{cwhere}: no cpu and memory requests")
    containers = spec.get("containers", [])
    if role == "node":
        for c in containers:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe not in c:
                    errors.append(f"{where} container {c['name']}: no {probe}")
    if role == "worker":
        for c in containers:
            if "readinessProbe" not in c:
                errors.append(f"{where} container {c['name']}: no readinessProbe")
    return errors


def check_rbac(objects, where):
    errors = []
    roles = [o for o in objects if o["kind"] == "Role"]
    for o in objects:
        if o["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            errors.append(f"{where}: {o['kind']} {o['metadata']['name']}: no cluster scope")
    if len(roles) != 1:
        errors.append(f"{where}: {len(roles)} Roles, expected the node's one")
    for role in roles:
        rules = role.get("rules", [])
        for rule in rules:
            for key in ("apiGroups", "resources", "verbs"):
                if "*" in rule.get(key, []):
                    errors.append(f"{where}: Role {role['metadata']['name']}: wildcard {key}")
        got = sorted(json.dumps(r, sort_keys=True) for r in rules)
        want = sorted(json.dumps(r, sort_keys=True) for r in NODE_RULES)
        if got != want:
            errors.append(f"{where}: Role {role['metadata']['name']} rules are {rules}, "
                          f"expected exactly {NODE_RULES}")
    return errors


def check_against_schema(value, schema, path):
    """Type, required and enum checks of an OpenAPI v3 (CRD) schema, refusing unknown fields
    where the schema lists the properties and does not preserve unknown ones."""
    errors = []
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)):
            errors.append(f"{path}: expected an integer or a string")
        return errors
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: {name} is required")
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                errors += check_against_schema(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += check_against_schema(item, extra, f"{path}.{key}")
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        for i, item in enumerate(value):
            errors += check_against_schema(item, schema.get("items", {}), f"{path}[{i}]")
    elif kind == "string" and not isinstance(value, str):
        errors.append(f"{path}: expected a string")
    elif kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        errors.append(f"{path}: expected an integer")
    elif kind == "boolean" and not isinstance(value, bool):
        errors.append(f"{path}: expected a boolean")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    return errors


def check_crds(objects, crd, where):
    errors = []
    group = crd["spec"]["group"]
    for o in objects:
        api_group, _, version = o["apiVersion"].rpartition("/")
        if api_group != group or o["kind"] != crd["spec"]["names"]["kind"]:
            continue
        versions = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
        if version not in versions:
            errors.append(f"{where}: {o['kind']} {version} is not served by the CRD")
            continue
        schema = copy.deepcopy(versions[version]["schema"]["openAPIV3Schema"])
        body = {k: v for k, v in o.items() if k not in ("apiVersion", "kind", "metadata")}
        schema.get("properties", {}).pop("metadata", None)
        schema.get("properties", {}).pop("apiVersion", None)
        schema.get("properties", {}).pop("kind", None)
        schema.get("properties", {}).pop("status", None)
        errors += check_against_schema(body, schema, f"{where}: {o['kind']} {o['metadata']['name']}")
    return errors


def check_all(objects, crd, where):
    errors = []
    for o in objects:
        errors += check_pod(o, f"{where}: {o['kind']} {o['metadata'].get('name')}")
    if any(o["kind"] in ("Role", "RoleBinding") for o in objects):
        errors += check_rbac(objects, where)
    errors += check_crds(objects, crd, where)
    return errors


def self_test(overlay, worker, crd):
    """Each policy rejects an object broken on purpose."""
    def broken(objects, change):
        objects = copy.deepcopy(objects)
        change(objects)
        return check_all(objects, crd, "self-test")

    def find(objects, kind):
        return next(o for o in objects if o["kind"] == kind)

    breakages = {
        "worker runtime class": ([worker], lambda os: os[0]["spec"].pop("runtimeClassName")),
        "hostPath": (overlay, lambda os: pod_spec(find(os, "StatefulSet"))["volumes"].append(
            {"name": "host", "hostPath": {"path": "/"}})),
        "privileged": (overlay, lambda os: pod_spec(find(os, "StatefulSet"))["containers"][0]
                       ["securityContext"].update(privileged=True)),
        "hostNetwork": ([worker], lambda os: os[0]["spec"].update(hostNetwork=True)),
        "wildcard verb": (overlay, lambda os: find(os, "Role")["rules"][0]["verbs"].append("*")),
        "missing verb": (overlay, lambda os: find(os, "Role")["rules"][0]["verbs"].remove("watch")),
        "cluster scope": (overlay, lambda os: os.append(
            {"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1",
             "metadata": {"name": "x"}, "rules": []})),
        "no readiness probe": (overlay, lambda os: pod_spec(find(os, "StatefulSet"))
                               ["containers"][0].pop("readinessProbe")),
        "no resources": ([worker], lambda os: os[0]["spec"]["containers"][0].pop("resources")),
    }
    crd_objects = [o for o in overlay if o["kind"] == crd["spec"]["names"]["kind"]]
    if crd_objects:
        breakages["unknown CRD field"] = (crd_objects, lambda os: os[0]["spec"].update(
            processCount=3))
        breakages["CRD field type"] = (crd_objects, lambda os: os[0]["spec"].update(
            version=7))
    failures = []
    for name, (objects, change) in breakages.items():
        if not broken(objects, change):
            failures.append(f"self-test: the policies accept {name}")
    return failures


def main():
    worker_path, crd_path, overlays = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(worker_path) as f:
        worker = json.load(f)
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    errors = check_all([worker], crd, "worker pod")
    for path in overlays:
        with open(path) as f:
            objects = [o for o in yaml.safe_load_all(f) if o]
        errors += check_all(objects, crd, path)
        errors += self_test(objects, worker, crd)
    for e in errors:
        print(f"policy: {e}", file=sys.stderr)
    if errors:
        sys.exit(1)
    print(f"policy: ok ({len(overlays)} overlays and the worker pod)")


if __name__ == "__main__":
    main()
