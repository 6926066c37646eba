"""Turn a CustomResourceDefinition into the JSON Schema check-jsonschema validates manifests with.

    git show v0.20.0:config/crd/full/serving.kserve.io_servingruntimes.yaml \
        | python k8s/kserve/schemas/from_crd.py v1alpha1 > servingruntime_v1alpha1.json

The schema is the CRD version's own `openAPIV3Schema`, changed only so that a file is checked the
way `kubectl apply` checks it with its default strict field validation (`--validate=strict`):
- an object that lists its `properties` rejects any other field (`additionalProperties: false`),
  except where the CRD keeps unknown fields (`x-kubernetes-preserve-unknown-fields`);
- `apiVersion` and `kind` must be this CRD's, and `apiVersion`, `kind`, `metadata` and `spec` given.
`description` texts are dropped and the JSON is compact: neither changes what is accepted, and
together they shrink the InferenceService schema from 1.9 MB of YAML to 0.7 MB.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

_SUBSCHEMA = {"items", "additionalProperties", "not"}
_SUBSCHEMA_LISTS = {"anyOf", "allOf", "oneOf"}


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with descriptions dropped and unknown fields refused, in every subschema."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA and isinstance(value, dict):
            out[key] = strict(value)
        elif key in _SUBSCHEMA_LISTS:
            out[key] = [strict(sub) for sub in value]
        else:  # type, format, required, enum, default, x-kubernetes-*: kept as written
            out[key] = value
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The JSON Schema for ``version`` of ``crd``. Raises KeyError for a version it lacks."""
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        raise KeyError(f"{crd['metadata']['name']} has no version {version}")
    schema = strict(versions[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema}


def main() -> None:
    (version,) = sys.argv[1:]
    schema = crd_schema(yaml.safe_load(sys.stdin), version)
    json.dump(schema, sys.stdout, sort_keys=True, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
