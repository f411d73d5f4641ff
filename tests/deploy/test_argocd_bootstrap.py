"""deploy/argocd (the Applications) and deploy/bootstrap (Postgres Cluster, ExternalSecrets),
validated against the CRD schemas, and consistent with what the chart reads."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from deploy.conftest import (
    ARGOCD,
    BOOTSTRAP,
    CHART,
    ROOT,
    SCHEMAS,
    container,
    custom_schema_path,
    load_yaml_file,
    needs_schemas,
    render,
    the,
    validate_custom,
)

WAVE = "argocd.argoproj.io/sync-wave"


def applications() -> dict[str, dict[str, Any]]:
    apps = {}
    for f in sorted(ARGOCD.glob("*.yaml")):
        for doc in load_yaml_file(f):
            assert doc["kind"] == "Application", f
            apps[doc["metadata"]["name"]] = doc
    return apps


def bootstrap_objects(optional: bool = False) -> list[dict[str, Any]]:
    files = sorted(BOOTSTRAP.glob("*.yaml"))
    if optional:
        files += sorted((BOOTSTRAP / "optional").glob("*.yaml"))
    return [doc for f in files for doc in load_yaml_file(f)]


@needs_schemas
def test_the_shared_schemas_are_there() -> None:
    assert (SCHEMAS / "argoproj.io" / "application_v1alpha1.json").exists(), SCHEMAS


def test_argocd_applications_validate() -> None:
    apps = applications()
    assert set(apps) == {"cloudnative-pg", "faregate-bootstrap", "faregate"}
    for app in apps.values():
        assert app["apiVersion"] == "argoproj.io/v1alpha1"
        validate_custom(app)


def test_sync_waves_order_operator_then_bootstrap_then_gateway() -> None:
    apps = applications()
    waves = {name: int(app["metadata"]["annotations"][WAVE]) for name, app in apps.items()}
    assert waves == {"cloudnative-pg": 1, "faregate-bootstrap": 3, "faregate": 4}
    assert waves["cloudnative-pg"] < waves["faregate-bootstrap"] < waves["faregate"]


def test_all_applications_auto_sync_with_prune_and_self_heal() -> None:
    for name, app in applications().items():
        automated = app["spec"]["syncPolicy"]["automated"]
        assert automated.get("prune") is True and automated.get("selfHeal") is True, name
        assert automated.get("enabled", True) is True, name


def test_applications_point_at_what_exists() -> None:
    apps = applications()
    cnpg = apps["cloudnative-pg"]["spec"]["source"]
    assert cnpg["chart"] == "cloudnative-pg" and cnpg["repoURL"].startswith("https://")
    assert "ServerSideApply=true" in apps["cloudnative-pg"]["spec"]["syncPolicy"]["syncOptions"]
    bootstrap = apps["faregate-bootstrap"]["spec"]
    assert (ROOT / bootstrap["source"]["path"]) == BOOTSTRAP
    gateway = apps["faregate"]["spec"]
    assert (ROOT / gateway["source"]["path"]) == CHART
    for values_file in gateway["source"]["helm"]["valueFiles"]:
        assert (CHART / values_file).exists(), values_file
    params = {p["name"]: p["value"] for p in gateway["source"]["helm"].get("parameters", [])}
    assert params.get("migrations.hookMode", "argocd") == "argocd"
    # the gateway lands where its bootstrap put the Secrets and the database
    assert gateway["destination"]["namespace"] == bootstrap["destination"]["namespace"]
    for obj in bootstrap_objects(optional=True):
        if obj["kind"] != "ClusterSecretStore":
            assert obj["metadata"]["namespace"] == gateway["destination"]["namespace"]


def test_a_misspelt_application_field_fails_validation() -> None:
    app = applications()["faregate"]
    app["spec"]["syncPolicy"]["automated"]["selfheal"] = True
    with pytest.raises(AssertionError, match="selfheal"):
        validate_custom(app)


@pytest.mark.parametrize("path", sorted(p.relative_to(BOOTSTRAP).as_posix()
                                        for p in BOOTSTRAP.rglob("*.yaml")))
def test_bootstrap_manifests_validate(path: str) -> None:
    for obj in load_yaml_file(BOOTSTRAP / path):
        assert custom_schema_path(obj).exists(), obj["kind"]
        validate_custom(obj)


def test_bootstrap_has_the_cluster_the_store_and_the_secrets() -> None:
    objects = bootstrap_objects()
    assert sorted(o["kind"] for o in objects) == [
        "Cluster", "ClusterSecretStore", "ExternalSecret", "ExternalSecret", "ExternalSecret"]
    cluster = the(objects, "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["spec"]["instances"] == 1
    text = (BOOTSTRAP / "cluster.yaml").read_text()
    assert "instances: 3" in text and "HA" in text          # the note on high availability
    store = the(objects, "ClusterSecretStore")
    assert "gcpsm" in store["spec"]["provider"]
    for es in (o for o in objects if o["kind"] == "ExternalSecret"):
        assert es["apiVersion"] == "external-secrets.io/v1"
        assert es["spec"]["secretStoreRef"] == {"kind": "ClusterSecretStore",
                                                "name": store["metadata"]["name"]}
    # inside the bootstrap app: the store before the secrets before the database
    waves = {o["kind"]: int(o["metadata"].get("annotations", {}).get(WAVE, 0)) for o in objects}
    assert waves["ClusterSecretStore"] < waves["ExternalSecret"] < waves["Cluster"]


def produced_secret_keys(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Secret name -> the keys the ExternalSecrets write into it."""
    produced: dict[str, set[str]] = {}
    for es in (o for o in objects if o["kind"] == "ExternalSecret"):
        target = es["spec"]["target"]
        template = target.get("template", {}).get("data")
        keys = set(template) if template else {d["secretKey"] for d in es["spec"]["data"]}
        produced.setdefault(target["name"], set()).update(keys)
    return produced


def referenced_secret_keys(variant: str) -> set[tuple[str, str]]:
    refs = set()
    for kind in ("Deployment", "Job"):
        for entry in container(the(render(variant), kind)).get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):     # optional: read only when present
                refs.add((ref["name"], ref["key"]))
    return refs


@pytest.mark.parametrize("variant", ["default", "production"])
def test_every_secret_the_chart_reads_is_produced_by_the_bootstrap(variant: str) -> None:
    produced = produced_secret_keys(bootstrap_objects(optional=variant == "production"))
    missing = [ref for ref in referenced_secret_keys(variant)
               if ref[1] not in produced.get(ref[0], set())]
    assert not missing, f"the chart reads secrets nobody creates: {missing}"


def test_cluster_credentials_and_database_url_agree() -> None:
    objects = bootstrap_objects()
    cluster = the(objects, "Cluster")
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["database"]["cnpgClusterName"] == cluster["metadata"]["name"]
    app_secret = next(o for o in objects if o["kind"] == "ExternalSecret"
                      and o["spec"]["target"]["name"] == initdb["secret"]["name"])
    template = app_secret["spec"]["target"]["template"]
    assert template["type"] == "kubernetes.io/basic-auth"
    assert template["data"]["username"] == initdb["owner"]
    uri = template["data"]["uri"]
    rw_host = f"{cluster['metadata']['name']}-rw.{cluster['metadata']['namespace']}.svc"
    assert uri == (f"postgresql://{initdb['owner']}:{{{{ .password }}}}@{rw_host}:5432/"
                   f"{initdb['database']}")
    assert initdb["secret"]["name"] == f"{values['database']['cnpgClusterName']}-app"


def test_bootstrap_holds_no_secret_value() -> None:
    for path in BOOTSTRAP.rglob("*.yaml"):
        for obj in load_yaml_file(path):
            assert obj["kind"] != "Secret", path
            if obj["kind"] == "ExternalSecret":
                template = obj["spec"]["target"].get("template", {}).get("data", {})
                for key, value in template.items():
                    if "password" in key or key == "uri":
                        assert "{{ .password }}" in value, key


def test_runbook_creates_every_remote_secret_the_bootstrap_reads() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    remote = {d["remoteRef"]["key"] for o in bootstrap_objects(optional=True)
              if o["kind"] == "ExternalSecret" for d in o["spec"]["data"]}
    for key in remote - {"vllm-api-key"}:                  # that one exists already
        assert f"gcloud secrets create {key}" in runbook, key
    assert "vllm-api-key" in runbook
