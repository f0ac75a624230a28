"""The KubeRay manifests validate against KubeRay's CRD schemas, strictly (no unknown fields)."""

from __future__ import annotations

import copy
import functools
import re
import shlex
from pathlib import Path

import pytest
import yaml

from batray.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT.parent / "shared" / "schemas" / "kuberay"
MANIFESTS = sorted((ROOT / "configs" / "kuberay").glob("*.yaml"))


def strict(schema: dict) -> dict:
    """Kubernetes prunes unknown fields silently; for a test, an unknown field must be an error."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and not node.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


@functools.cache
def crd_schema(kind: str) -> dict:
    path = SCHEMAS / f"ray.io_{kind.lower()}s.yaml"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 25k lines
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


@pytest.mark.skipif(not SCHEMAS.is_dir(), reason="KubeRay CRD schemas not present in ../shared/schemas/kuberay")
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_crd(manifest):
    import jsonschema

    doc = yaml.safe_load(manifest.read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    jsonschema.validate(doc, crd_schema(doc["kind"]))
    if doc["kind"] == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
        assert "working_dir" in runtime_env


@pytest.mark.skipif(not SCHEMAS.is_dir(), reason="KubeRay CRD schemas not present")
def test_strict_schema_rejects_a_misspelled_field():
    import jsonschema

    doc = yaml.safe_load((ROOT / "configs/kuberay/tiny-rayjob.yaml").read_text())
    doc["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, crd_schema("RayJob"))


@pytest.mark.parametrize("manifest", [m for m in MANIFESTS if "rayjob" in m.name], ids=lambda p: p.name)
def test_rayjob_entrypoints_name_valid_recipes(manifest):
    """Every config an entrypoint names exists and validates with the entrypoint's overrides."""
    doc = yaml.safe_load(manifest.read_text())
    for command in doc["spec"]["entrypoint"].split("&&"):
        argv = shlex.split(command)
        config = next(a for a in argv if a.endswith(".yaml"))
        overrides = [a for a in argv if re.match(r"^[a-z_]+(\.[a-z_0-9]+)+=", a)]
        load_config(ROOT / config, overrides)
