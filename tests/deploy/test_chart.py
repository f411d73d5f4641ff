"""The Helm chart deploy/helm/faregate, rendered by the real helm CLI (no cluster)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy.conftest import (
    CHART,
    PRODUCTION_VALUES,
    VARIANTS,
    config_yaml,
    container,
    env_of,
    helm,
    is_custom,
    kinds,
    render,
    template,
    the,
    validate_any,
    validate_builtin,
)

from faregate import config as faregate_config
from faregate.errors import ConfigError
from faregate.money import price_to_femtos

POSTGRES_VARIANTS = list(VARIANTS)
SECRET_LOOKING = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|SALT|CREDENTIAL|_URL$|^URL$")
DUMMY = {"FAREGATE_MASTER_KEY": "sk-dummy-master-key-for-tests",
         "DATABASE_URL": "postgresql://user:pw@db.invalid:5432/faregate",
         "REDIS_URL": "redis://redis.invalid:6379/0"}


def chart_values(*files: Path) -> dict[str, Any]:
    """values.yaml with the given files merged over it (top-level keys, as these files use)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in files:
        values.update(yaml.safe_load(f.read_text()))
    return values


# --- lint and render --------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_helm_lint_strict_passes(variant: str) -> None:
    result = helm("lint", "--strict", str(CHART), *VARIANTS[variant])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_default_renders_the_expected_objects() -> None:
    assert kinds(render("default")) == ["ConfigMap", "Deployment", "Job",
                                        "PodDisruptionBudget", "Service", "ServiceAccount"]


def test_production_adds_autoscaler_and_network_policy() -> None:
    objects = render("production")
    assert kinds(objects) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job",
                              "NetworkPolicy", "PodDisruptionBudget", "Service",
                              "ServiceAccount", "ServiceMonitor"]
    deployment = the(objects, "Deployment")
    assert "replicas" not in deployment["spec"]          # the autoscaler owns the count
    hpa = the(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "REDIS_URL" in env_of(container(deployment))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rendered_object_validates_strictly(variant: str) -> None:
    objects = render(variant)
    for obj in objects:
        validate_any(obj)
    # production's ServiceMonitor is a custom resource, checked against its CRD schema
    assert any(is_custom(o) for o in objects) == variant.startswith("production")


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = the(render("default"), "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(pytest.fail.Exception):
        validate_builtin(deployment)


# --- the migration hook -------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["default", "production"])
def test_migration_job_is_an_argocd_presync_hook(variant: str) -> None:
    job = the(render(variant), "Job")
    notes = job["metadata"]["annotations"]
    assert notes["argocd.argoproj.io/hook"] == "PreSync"
    assert notes["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation,HookSucceeded"
    assert not any(k.startswith("helm.sh/hook") for k in notes)
    assert container(job)["args"] == ["migrate"]


@pytest.mark.parametrize("variant", ["default-helm-hooks", "production-helm-hooks"])
def test_migration_job_as_a_helm_hook(variant: str) -> None:
    job = the(render(variant), "Job")
    notes = job["metadata"]["annotations"]
    assert notes["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert notes["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert not any(k.startswith("argocd.argoproj.io") for k in notes)


def test_hook_mode_is_checked_by_the_schema() -> None:
    result = template("--set", "migrations.hookMode=flux")
    assert result.returncode != 0
    assert "hookMode" in result.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_job_can_run_before_anything_else_of_the_chart_exists(variant: str) -> None:
    """A PreSync/pre-install hook runs before the ConfigMap and ServiceAccount are created."""
    pod = the(render(variant), "Job")["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod
    assert all("configMap" not in v for v in pod.get("volumes", []))
    assert pod["restartPolicy"] == "Never"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_schema_update_disabled_on_the_deployment_and_not_on_the_job(variant: str) -> None:
    objects = render(variant)
    deployment_env = env_of(container(the(objects, "Deployment")))
    assert deployment_env["DISABLE_SCHEMA_UPDATE"]["value"] == "true"
    job_env = env_of(container(the(objects, "Job")))
    assert job_env.get("DISABLE_SCHEMA_UPDATE", {}).get("value", "false") \
        not in faregate_config.TRUE_WORDS
    # the Job migrates the same database the gateway uses
    assert job_env["DATABASE_URL"] == deployment_env["DATABASE_URL"]


def test_sqlite_single_replica_has_no_job_and_migrates_itself() -> None:
    objects = template("--set", "database.type=sqlite",
                       "--set", "database.sqlite.existingClaim=faregate-data").objects()
    assert "Job" not in kinds(objects)
    deployment = the(objects, "Deployment")
    env = env_of(container(deployment))
    assert "DISABLE_SCHEMA_UPDATE" not in env
    assert env["DATABASE_URL"]["value"].startswith("sqlite:////var/lib/faregate/")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "faregate-data"
    for obj in objects:
        validate_any(obj)


# --- the Deployment ---------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["default", "production"])
def test_probes_drain_and_security(variant: str) -> None:
    deployment = the(render(variant), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/liveliness"
    assert c["startupProbe"]["httpGet"]["path"] == "/health/liveliness"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert c["ports"] == [{"name": "http", "containerPort": 4000, "protocol": "TCP"}]
    assert c["args"][:3] == ["serve", "--config", "/etc/faregate/config.yaml"]
    # SIGTERM drains for up to 30 s (uvicorn's graceful timeout), then flushes the ledger;
    # the preStop sleep comes first and the grace period must cover all of it.
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and 1 <= int(sleep[1]) <= 10
    assert pod["terminationGracePeriodSeconds"] >= int(sleep[1]) + 30 + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data_dir = env_of(c)["FAREGATE_DATA_DIR"]["value"]
    for path in ("/tmp", data_dir):
        assert "emptyDir" in volumes[mounts[path]], path
    assert "configMap" in volumes[mounts["/etc/faregate"]]


def test_production_scrapes_the_metrics_the_gateway_serves() -> None:
    objects = render("production")
    monitor = the(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"          # faregate's app serves GET /metrics
    service_ports = {p["name"] for p in the(objects, "Service")["spec"]["ports"]}
    assert endpoint["port"] in service_ports
    # Prometheus, in the monitoring namespace, may reach the pods.
    peers = the(objects, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}} in peers


def test_prometheus_scrapes_with_the_metrics_token_the_pods_accept() -> None:
    """/metrics asks for a bearer token: the ServiceMonitor sends the one the pods read."""
    objects = render("production")
    [endpoint] = the(objects, "ServiceMonitor")["spec"]["endpoints"]
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    ref = env_of(container(the(objects, "Deployment")))["FAREGATE_METRICS_TOKEN"]
    assert ref["valueFrom"]["secretKeyRef"] == {"name": credentials["name"],
                                               "key": credentials["key"]}
    general = yaml.safe_load(config_yaml(objects))["general_settings"]
    assert general["require_auth_for_metrics_endpoint"] is True
    # the default (no ServiceMonitor) still asks for a token, and reads no token Secret
    default = render("default")
    default_general = yaml.safe_load(config_yaml(default))["general_settings"]
    assert default_general["require_auth_for_metrics_endpoint"] is True
    assert "FAREGATE_METRICS_TOKEN" not in env_of(container(the(default, "Deployment")))


def test_a_service_monitor_without_a_token_needs_an_open_metrics_endpoint() -> None:
    refused = helm("template", "faregate", str(CHART), *VARIANTS["production"],
                   "--set", "metricsToken.enabled=false")
    assert refused.returncode != 0
    assert "metrics" in refused.stderr
    opened = template(*VARIANTS["production"], "--set", "metricsToken.enabled=false",
                      "--set", "metricsRequireAuth=false").objects()
    [endpoint] = the(opened, "ServiceMonitor")["spec"]["endpoints"]
    assert "authorization" not in endpoint
    opened_general = yaml.safe_load(config_yaml(opened))["general_settings"]
    assert opened_general["require_auth_for_metrics_endpoint"] is False


def test_service_and_pdb_select_the_gateway_pods() -> None:
    objects = render("production-monitoring")
    pod_labels = the(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = the(objects, "Service")
    assert service["spec"]["ports"][0]["port"] == 4000
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    for selector in (service["spec"]["selector"],
                     the(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     the(objects, "ServiceMonitor")["spec"]["selector"]["matchLabels"],
                     the(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    # the migration pod is neither an endpoint of the Service nor counted by the PDB
    job_labels = the(objects, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= job_labels.items()


def test_config_change_rolls_the_pods() -> None:
    before = the(render("default"), "Deployment")["spec"]["template"]["metadata"]
    after = the(template("--set", "maxRequestBodyBytes=1024").objects(),
                "Deployment")["spec"]["template"]["metadata"]
    assert before["annotations"]["checksum/config"] != after["annotations"]["checksum/config"]


# --- secrets ----------------------------------------------------------------------------

def literal_secrets(objects: list[dict[str, Any]], text: str) -> list[str]:
    """Everything in a rendering that looks like a secret value rather than a reference."""
    found = [f"{o['kind']}/{o['metadata']['name']}" for o in objects
             if o["kind"] == "Secret" or (o["kind"] == "ConfigMap" and set(o.get("data", {}))
                                          - {"config.yaml"})]
    for o in objects:
        spec = o.get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for e in c.get("env", []):
                if SECRET_LOOKING.search(e["name"]) and "value" in e \
                        and not str(e["value"]).startswith("sqlite:///"):
                    found.append(f"env {e['name']}={e['value']}")
            if c.get("envFrom"):
                found += [f"envFrom {c['envFrom']}"]
    found += re.findall(r"\bsk-[A-Za-z0-9_-]{6,}", text)                # a key
    found += re.findall(r"[a-z]+://[^\s/@:'\"]+:[^\s/@'\"]+@", text)       # a URL with a password
    for o in objects:
        if o["kind"] == "ConfigMap" and "config.yaml" in o.get("data", {}):
            cfg = yaml.safe_load(o["data"]["config.yaml"])
            for setting, value in _walk(cfg):
                if setting in {"api_key", "master_key", "database_url", "redis_url",
                               "salt_key"} and not str(value).startswith("os.environ/"):
                    found.append(f"config {setting}={value}")
    return found


def _walk(node: Any) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            pairs.append((str(k), v))
            pairs += _walk(v)
    elif isinstance(node, list):
        for v in node:
            pairs += _walk(v)
    return pairs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_secret_value_anywhere_in_the_rendered_output(variant: str) -> None:
    text = template(*VARIANTS[variant]).stdout
    objects = render(variant)
    assert literal_secrets(objects, text) == []
    # every secret-looking variable is read from a Secret by name
    for workload in (the(objects, "Deployment"), the(objects, "Job")):
        for name, entry in env_of(container(workload)).items():
            if SECRET_LOOKING.search(name):
                assert set(entry["valueFrom"]) == {"secretKeyRef"}, name
    master = env_of(container(the(objects, "Deployment")))["FAREGATE_MASTER_KEY"]
    assert master["valueFrom"]["secretKeyRef"] == {"name": "faregate-secrets",
                                                   "key": "PROXY_MASTER_KEY"}
    database = env_of(container(the(objects, "Deployment")))["DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"] == {"name": "faregate-pg-app", "key": "uri"}
    # A salt-key rotation needs no chart change: the previous key is read when present.
    previous = env_of(container(the(objects, "Deployment")))["FAREGATE_SALT_KEY_PREVIOUS"]
    assert previous["valueFrom"]["secretKeyRef"] == {
        "name": "faregate-secrets", "key": "FAREGATE_SALT_KEY_PREVIOUS", "optional": True}


def test_the_secret_detector_finds_planted_secrets() -> None:
    objects = render("default")
    deployment = the(objects, "Deployment")
    c = container(deployment)
    c["env"].append({"name": "OPENAI_API_KEY", "value": "abc"})
    cm = the(objects, "ConfigMap")
    cm["data"]["config.yaml"] = cm["data"]["config.yaml"].replace(
        "os.environ/VLLM_API_KEY", "vllm-literal")
    text = "db: postgresql://faregate:hunter2@db:5432/x\nkey: sk-abcdefghijkl\n"
    found = literal_secrets([*objects, {"kind": "Secret", "metadata": {"name": "x"}}], text)
    assert len(found) == 5, found


@pytest.mark.parametrize("override", [
    ("--set", "masterKey=sk-leaked-master-key"),
    ("--set", "masterkeySecretName="),
    ("--set-json", 'extraEnv=[{"name":"OPENAI_API_KEY","value":"sk-x"}]'),
    ("--set-json", 'extraEnv=[{"name":"DATABASE_URL","value":"postgresql://u:p@h/d"}]'),
])
def test_values_that_would_carry_a_secret_are_refused(override: tuple[str, str]) -> None:
    result = template(*override)
    assert result.returncode != 0
    assert "schema" in result.stderr


def test_a_literal_provider_key_in_the_model_list_is_refused(tmp_path: Path) -> None:
    values = chart_values()
    values["modelList"][0]["litellm_params"]["api_key"] = "sk-literal-upstream-key"
    f = tmp_path / "leak.yaml"
    f.write_text(yaml.safe_dump({"modelList": values["modelList"]}))
    result = template("-f", str(f))
    assert result.returncode != 0 and "api_key" in result.stderr


# --- the schema refuses what cannot work ------------------------------------------------

@pytest.mark.parametrize(("args", "why"), [
    (("--set", "replicaCount=3", "--set", "database.type=sqlite",
      "--set", "database.sqlite.existingClaim=data", "--set", "redis.enabled=true"),
     "replicaCount"),
    (("--set", "replicaCount=3", "--set", "database.type=sqlite",
      "--set", "database.sqlite.existingClaim=data"), "replicaCount"),
    (("--set", "replicaCount=2"), "redis"),
    (("--set", "workers=2"), "redis"),
    (("--set", "autoscaling.enabled=true"), "redis"),
    (("--set", "database.type=sqlite"), "existingClaim"),
    (("--set", "database.type=mysql"), "type"),
    (("--set", "terminationGracePeriodSeconds=30"), "terminationGracePeriodSeconds"),
    (("--set", "preStopSleepSeconds=60"), "preStopSleepSeconds"),
    (("--set", "replicaCount=0"), "replicaCount"),
])
def test_schema_rejects_bad_values(args: tuple[str, ...], why: str) -> None:
    for command in ("template", "lint"):
        if command == "template":
            result = template(*args)
        else:
            result = helm("lint", "--strict", str(CHART), *args)
        assert result.returncode != 0, f"helm {command} accepted {args}"
        assert why in result.stdout + result.stderr


def test_schema_rejects_a_model_without_prices(tmp_path: Path) -> None:
    values = chart_values()
    del values["modelList"][0]["litellm_params"]["output_cost_per_token"]
    f = tmp_path / "noprice.yaml"
    f.write_text(yaml.safe_dump({"modelList": values["modelList"]}))
    result = template("-f", str(f))
    assert result.returncode != 0 and "output_cost_per_token" in result.stderr


def test_several_replicas_with_redis_on_postgres_are_accepted() -> None:
    objects = template("--set", "replicaCount=2", "--set", "redis.enabled=true").objects()
    assert the(objects, "Deployment")["spec"]["replicas"] == 2


# --- config.yaml is faregate's own ------------------------------------------------------

def load_rendered_config(objects: list[dict[str, Any]], tmp_path: Path
                         ) -> faregate_config.Settings:
    """config.yaml through faregate's loader, with the env the Deployment gives it."""
    text = config_yaml(objects)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    env = env_of(container(the(objects, "Deployment")))
    referenced = {str(v).removeprefix("os.environ/") for _, v in _walk(yaml.safe_load(text))
                  if str(v).startswith("os.environ/")}
    missing = referenced - set(env)
    assert not missing, f"config.yaml reads variables the Deployment does not set: {missing}"
    environ = {name: DUMMY.get(name, f"dummy-{name.lower()}") for name in env}
    environ.update({n: e["value"] for n, e in env.items() if "value" in e})
    return faregate_config.load(environ, path)


@pytest.mark.parametrize("variant", ["default", "production"])
def test_rendered_config_is_accepted_by_faregates_loader(variant: str, tmp_path: Path) -> None:
    objects = render(variant)
    settings = load_rendered_config(objects, tmp_path)
    values = chart_values(*([PRODUCTION_VALUES] if variant == "production" else []))
    assert settings.models() == [m["model_name"] for m in values["modelList"]]
    for deployment, model in zip(settings.deployments, values["modelList"], strict=True):
        params = model["litellm_params"]
        assert deployment.input_femtos == price_to_femtos(params["input_cost_per_token"]) > 0
        assert deployment.output_femtos == price_to_femtos(params["output_cost_per_token"]) > 0
        assert deployment.api_base == params["api_base"]
        assert deployment.api_key is not None
    assert settings.master_key_source == "environment variable FAREGATE_MASTER_KEY"
    assert settings.database_url == DUMMY["DATABASE_URL"]
    assert settings.disable_schema_update is True
    if variant == "production":
        assert settings.redis_url == DUMMY["REDIS_URL"]
        assert settings.redis_failure_mode == "fail_closed"
        hpa = the(objects, "HorizontalPodAutoscaler")
        assert settings.replicas == hpa["spec"]["maxReplicas"]
    else:
        assert settings.redis_url is None


def test_default_model_is_qwen_local_on_the_inference_gateway() -> None:
    cfg = yaml.safe_load(config_yaml(render("default")))
    [qwen] = cfg["model_list"]
    assert qwen["model_name"] == "qwen-local"
    assert qwen["litellm_params"]["api_key"] == "os.environ/VLLM_API_KEY"
    assert ".svc.cluster.local" in qwen["litellm_params"]["api_base"]
    env = env_of(container(the(render("default"), "Deployment")))
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "vllm-api-key"


def uncomment_claude(values_text: str) -> str:
    """values.yaml with its commented-out claude-haiku model and its key's env entry enabled."""
    out, live = [], False
    for line in values_text.splitlines():
        if re.match(r"^  # - (model_name: claude-haiku|name: ANTHROPIC_API_KEY)$", line):
            live = True
        elif live and not line.startswith("  #   "):
            live = False
        out.append(line.replace("  # ", "  ", 1) if live else line)
    return "\n".join(out) + "\n"


def test_commented_claude_haiku_is_a_valid_model_once_uncommented(tmp_path: Path) -> None:
    text = (CHART / "values.yaml").read_text()
    assert "claude-haiku" not in config_yaml(render("default"))
    enabled = uncomment_claude(text)
    assert enabled != text
    f = tmp_path / "values-claude.yaml"
    f.write_text(enabled)
    objects = template("-f", str(f)).objects()
    settings = load_rendered_config(objects, tmp_path)
    assert settings.models() == ["qwen-local", "claude-haiku"]
    env = env_of(container(the(objects, "Deployment")))
    assert "secretKeyRef" in env["ANTHROPIC_API_KEY"]["valueFrom"]


def test_loader_rejects_the_rendered_config_when_the_deployment_lacks_a_secret(
        tmp_path: Path) -> None:
    objects = render("default")
    deployment = the(objects, "Deployment")
    c = container(deployment)
    c["env"] = [e for e in c["env"] if e["name"] != "VLLM_API_KEY"]
    with pytest.raises(AssertionError, match="VLLM_API_KEY"):
        load_rendered_config(objects, tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(config_yaml(objects))
    with pytest.raises(ConfigError, match="VLLM_API_KEY"):
        faregate_config.load({"FAREGATE_MASTER_KEY": DUMMY["FAREGATE_MASTER_KEY"]}, path)
