"""Schema checks of KServe manifests, run with the kserve venv's python by tests/test_kserve.py.

    python tests/kserve_schemas.py MANIFEST.yaml [...]

Prints ``{path: [problem, ...]}`` as JSON (an empty list: the manifest is valid). Two checks:

- KServe's kinds through the kserve SDK's generated model classes (``V1beta1InferenceService``,
  ``V1alpha1ClusterServingRuntime``, ...), deserialised strictly: every key must be one the model
  (or the Kubernetes model it embeds, e.g. ``V1Container``) declares, every value of the declared
  type, and the constructors' own validation (required fields, enums) runs;
- the core Kubernetes parts they embed (the runtime's containers, the predictor's model container)
  with ``kubernetes-validate`` against Kubernetes' own JSON schema, wrapped in a Pod.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

import kserve
import kubernetes.client
import kubernetes_validate
import yaml

KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}
# ResourceQuantity: KServe's name for a Kubernetes quantity ("4", "6Gi", 1).
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "bytes": str,
              "ResourceQuantity": (str, int, float)}
# Fields of KServe's model container that are KServe's own, not a Kubernetes Container's.
MODEL_ONLY = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage"}
K8S_VERSION = "1.33"


def model_class(name: str) -> Any:
    for module in (kserve, kserve.models, kubernetes.client):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no model class {name}")


def strict(value: Any, type_name: str, where: str, problems: List[str]) -> Any:
    """``value`` deserialised as ``type_name`` (an OpenAPI-generator type string), refusing unknown keys."""
    if value is None:
        return None
    listed = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)
    if listed:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return None
        return [strict(v, listed.group(1), f"{where}[{i}]", problems) for i, v in enumerate(value)]
    mapped = re.fullmatch(r"dict\((\w+), (.+)\)", type_name) or re.fullmatch(r"Dict\[(\w+), (.+)\]", type_name)
    if mapped:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {type(value).__name__}")
            return None
        return {k: strict(v, mapped.group(2), f"{where}.{k}", problems) for k, v in value.items()}
    if type_name in PRIMITIVES:
        expected = PRIMITIVES[type_name]
        if expected is int and isinstance(value, bool) or not isinstance(value, expected):
            problems.append(f"{where}: expected {type_name}, got {value!r}")
        return value
    if type_name == "datetime":
        return value
    cls = model_class(type_name)
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a {type_name} mapping, got {type(value).__name__}")
        return None
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        if key not in by_key:
            problems.append(f"{where}.{key}: unknown field of {type_name}")
            continue
        attr = by_key[key]
        kwargs[attr] = strict(item, cls.openapi_types[attr], f"{where}.{key}", problems)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        problems.append(f"{where}: {type_name} refused it: {exc}")
        return None


def core_problems(container: Dict[str, Any], where: str) -> List[str]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [container]}}
    try:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where} (as a Kubernetes Container): {exc.message}"]
    return []


def check(path: Path) -> List[str]:
    problems: List[str] = []
    for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
        kind = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
        if kind is None:
            problems.append(f"document {index}: unknown kind {doc.get('apiVersion')}/{doc.get('kind')}")
            continue
        strict(doc, kind, doc["kind"], problems)
        spec = doc.get("spec") or {}
        if doc["kind"] == "InferenceService":
            model = dict(spec.get("predictor", {}).get("model", {}))
            container = {k: v for k, v in model.items() if k not in MODEL_ONLY}
            problems += core_problems({"name": "kserve-container", "image": "placeholder", **container},
                                      "spec.predictor.model")
        else:
            for i, container in enumerate(spec.get("containers", [])):
                problems += core_problems(container, f"spec.containers[{i}]")
    return problems


def main() -> int:
    json.dump({path: check(Path(path)) for path in sys.argv[1:]}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
