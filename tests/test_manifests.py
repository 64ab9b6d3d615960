"""Deployment files without a cluster: render the Kustomize overlays (``kubectl kustomize``, offline) and
the Helm chart (real Helm, bundled as a library in the ``helm-python-sdk`` wheel), then validate every
object:

* built-in kinds against the Kubernetes 1.37 OpenAPI schemas that ``kubernetes-validate`` ships (strict:
  unknown fields fail);
* Katib ``Experiment`` against the Katib v1beta1 API models (``kubeflow-katib-api``), its trial Job
  against the Kubernetes schema;
* Prometheus Operator ``ServiceMonitor`` against the ``cloudcoil-models-prometheus-operator`` models;
* Argo CD ``Application`` against the Argo CD API models of ``argocd-python-client``.

The model checks also reject unknown keys at every level (the models themselves ignore them).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.serving

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "longtail-serving"
K8S_VERSION = "1.37.0"
OVERLAYS = ["local", "gpu"]
CUSTOM = {("kubeflow.org/v1beta1", "Experiment"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
          ("argoproj.io/v1alpha1", "Application")}


# ---------------------------------------------------------------------- rendering
def kustomize(path: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (Debian package 'kubectl') is not installed: cannot render Kustomize offline")
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def helm_render(values: dict | None = None) -> list[dict]:
    from helm_python.chart import Chart

    rendered = Chart.load(str(CHART)).render(values=values or {}, name="lt", namespace="longtail")
    docs = []
    for name, text in rendered.items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


# ---------------------------------------------------------------------- validators
def _unwrap(tp: Any) -> list[Any]:
    """The model classes (or list markers) inside an annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) or origin is typing.Annotated:
        return [x for a in typing.get_args(tp) for x in _unwrap(a)]
    if origin in (list, tuple):
        return [("list", typing.get_args(tp)[0])]
    return [tp]


def strict_pydantic(model: type, data: Any, where: str = "") -> list[str]:
    """Unknown keys anywhere under ``data`` for a pydantic model class (the models ignore extras)."""
    from pydantic import BaseModel

    problems: list[str] = []
    if not isinstance(data, dict):
        return problems
    fields = {(f.alias or n): f for n, f in model.model_fields.items()}
    fields.update({n: f for n, f in model.model_fields.items()})
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{where}.{key}: unknown field of {model.__name__}")
            continue
        for t in _unwrap(fields[key].annotation):
            if isinstance(t, tuple) and t[0] == "list":
                inner = [x for x in _unwrap(t[1]) if isinstance(x, type) and issubclass(x, BaseModel)]
                for i, item in enumerate(value if isinstance(value, list) else []):
                    for m in inner:
                        problems += strict_pydantic(m, item, f"{where}.{key}[{i}]")
            elif isinstance(t, type) and issubclass(t, BaseModel):
                problems += strict_pydantic(t, value, f"{where}.{key}")
    return problems


# Fields of the Argo CD CRD that the (2021) argocd-python-client models lack; listed, not silently skipped.
ARGOCD_MODEL_GAPS = {("V1alpha1RetryStrategy", "limit")}
TYPE_META = {"apiVersion", "kind"}


def strict_openapi(model: type, data: Any, where: str = "", top: bool = True) -> list[str]:
    """Unknown keys under ``data`` for an openapi-generator (argocd-python-client) model class."""
    problems: list[str] = []
    if not isinstance(data, dict) or not hasattr(model, "attribute_map"):
        return problems
    by_json = {v: k for k, v in model.attribute_map.items()}
    types_ = model.openapi_types
    for key, value in data.items():
        if (top and key in TYPE_META) or (model.__name__, key) in ARGOCD_MODEL_GAPS:
            continue
        if key not in by_json:
            problems.append(f"{where}.{key}: unknown field of {model.__name__}")
            continue
        for t in types_[by_json[key]]:
            if isinstance(t, list):
                for i, item in enumerate(value if isinstance(value, list) else []):
                    problems += strict_openapi(t[0], item, f"{where}.{key}[{i}]", False)
            else:
                problems += strict_openapi(t, value, f"{where}.{key}", False)
    return problems


def _int_as_str(o: Any) -> Any:
    # Argo CD's API models follow its grpc-gateway JSON, where int64 fields are strings
    if isinstance(o, bool):
        return o
    if isinstance(o, int):
        return str(o)
    if isinstance(o, dict):
        return {k: _int_as_str(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_int_as_str(v) for v in o]
    return o


def validate(obj: dict) -> list[str]:
    """Every schema problem of one object (empty: valid)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if key not in CUSTOM:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            return [f"{where}: {e.path}: {e.message}"]
        return []
    if key[1] == "Experiment":
        from kubeflow_katib_api.models.v1beta1_experiment import V1beta1Experiment

        problems = strict_pydantic(V1beta1Experiment, obj, where)
        try:
            V1beta1Experiment.from_dict(obj)
        except Exception as e:  # pydantic ValidationError: wrong types or values
            problems.append(f"{where}: {e}")
        trial = obj["spec"]["trialTemplate"]["trialSpec"]
        return problems + [f"{where} trialSpec: {p}" for p in validate(trial)]
    if key[1] == "ServiceMonitor":
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

        problems = strict_pydantic(ServiceMonitor, obj, where)
        try:
            ServiceMonitor.model_validate(obj)
        except Exception as e:
            problems.append(f"{where}: {e}")
        return problems
    from argocd_python_client.configuration import Configuration
    from argocd_python_client.model.v1alpha1_application import V1alpha1Application
    from argocd_python_client.model_utils import validate_and_convert_types

    data = _int_as_str(obj)
    problems = strict_openapi(V1alpha1Application, data, where)
    data = {k: v for k, v in data.items() if k not in TYPE_META}
    data["spec"] = copy.deepcopy(data["spec"])
    data["spec"].get("syncPolicy", {}).get("retry", {}).pop("limit", None)  # ARGOCD_MODEL_GAPS
    try:
        validate_and_convert_types(data, (V1alpha1Application,), [where], True, True,
                                   configuration=Configuration(discard_unknown_keys=False))
    except Exception as e:
        problems.append(f"{where}: {e}")
    return problems


def pod_specs(obj: dict) -> list[dict]:
    """The pod specs inside a workload (Deployment, Job, CronJob, Katib trial)."""
    kind = obj["kind"]
    if kind in ("Deployment", "Job"):
        return [obj["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "Experiment":
        return pod_specs(obj["spec"]["trialTemplate"]["trialSpec"])
    return []


# ---------------------------------------------------------------------- Kustomize
@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, kustomize(MANIFESTS / "overlays" / request.param)


def test_overlays_validate(overlay):
    name, docs = overlay
    kinds = {d["kind"] for d in docs}
    assert {"Job", "Experiment", "Role", "RoleBinding", "ServiceAccount", "NetworkPolicy",
            "ConfigMap"} <= kinds
    problems = [p for d in docs for p in validate(d)]
    assert not problems, "\n".join(problems)


def test_argocd_application_validates():
    app = yaml.safe_load((MANIFESTS / "argocd" / "application.yaml").read_text())
    assert not validate(app)
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert (MANIFESTS / app["spec"]["source"]["path"].removeprefix("manifests/")).is_dir()


def test_validators_catch_mistakes():
    app = yaml.safe_load((MANIFESTS / "argocd" / "application.yaml").read_text())
    bad = copy.deepcopy(app)
    bad["spec"]["syncPolicy"]["automatic"] = True
    assert any("automatic" in p for p in validate(bad))
    exp = next(d for d in kustomize(MANIFESTS / "overlays" / "gpu") if d["kind"] == "Experiment")
    bad = copy.deepcopy(exp)
    bad["spec"]["maxTrialCount"] = "many"
    assert validate(bad)
    bad = copy.deepcopy(exp)
    bad["spec"]["paralelTrialCount"] = 2
    assert any("paralelTrialCount" in p for p in validate(bad))
    job = copy.deepcopy(exp["spec"]["trialTemplate"]["trialSpec"])
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    assert validate(job)


def test_workloads_are_non_root_read_only_and_reference_secrets(overlay):
    _, docs = overlay
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are referenced, never defined inline"
    specs = [s for d in docs for s in pod_specs(d)]
    assert len(specs) >= 3
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert ":" not in c["image"] or not c["image"].endswith(":latest")
            for env in c.get("env", []):
                if any(w in env["name"] for w in ("SECRET", "TOKEN", "PASSWORD", "KEY_ID")):
                    assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]


def test_rbac_is_least_privilege(overlay):
    _, docs = overlay
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = next(d for d in docs if d["kind"] == "Role")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"] and rule["resourceNames"]


def test_gpu_overlay_schedules_trials_on_the_gpu_pool():
    docs = kustomize(MANIFESTS / "overlays" / "gpu")
    spec = pod_specs(next(d for d in docs if d["kind"] == "Experiment"))[0]
    assert spec["nodeSelector"] == {"longtail.io/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    local = kustomize(MANIFESTS / "overlays" / "local")
    assert "nodeSelector" not in pod_specs(next(d for d in local if d["kind"] == "Experiment"))[0]


def test_a_retrain_config_change_in_git_resubmits(tmp_path):
    """GitOps: the submitter is an Argo CD Sync hook that mounts the hash-named retrain config, so a
    changed config renders a new ConfigMap name (the app goes OutOfSync, is synced, the hook runs)."""
    copy_root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy_root)

    def render() -> tuple[str, dict]:
        docs = kustomize(copy_root / "overlays" / "gpu")
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(
            "longtail-retrain-config"))
        job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "longtail-retrain-submit")
        return cm["metadata"]["name"], job

    name1, job = render()
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
    mounted = [v["configMap"]["name"] for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert mounted == [name1]
    cfg = copy_root / "overlays" / "gpu" / "retrain-config.yaml"
    cfg.write_text(cfg.read_text().replace("parallelism: 4", "parallelism: 6"))
    name2, _ = render()
    assert name2 != name1


@pytest.mark.parametrize("name", OVERLAYS)
def test_retrain_config_is_a_pipelines_config(name):
    """The mounted retrain config is what `longtail pipelines submit retrain --config` reads."""
    pipelines_config = pytest.importorskip("longtail.workflow.config")
    from longtail.config import load_config

    docs = kustomize(MANIFESTS / "overlays" / name)
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("longtail-retrain"))
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert {j["metadata"]["name"] for j in jobs} == {"longtail-retrain-recurring", "longtail-retrain-submit"}
    for job in jobs:
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[:4] == ["longtail", "pipelines", "submit", "retrain"]
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(cm["data"]["retrain.yaml"])
        f.flush()
        cfg = load_config(pipelines_config.PipelinesJobConfig, f.name)
    assert cfg.cluster.accelerator_limit == (1 if name == "gpu" else 0)
    production = pipelines_config.PipelineConfig()  # what the manifests do not set is the production default
    assert cfg.pipeline.recipe == production.recipe and cfg.pipeline.references == ()
    assert cfg.pipeline.max_rows_per_scenario == 0 and cfg.pipeline.tables.startswith("s3://")
    if name == "gpu":
        assert (cfg.cluster.node_selector_key, cfg.cluster.node_selector_value) == ("longtail.io/pool", "gpu")


# ---------------------------------------------------------------------- Helm chart
CHART_CASES = {
    "defaults": {},
    "gpu": {"gpu": {"enabled": True}},
    "raw-features-fixed-replicas": {"feast": {"enabled": False}, "autoscaling": {"enabled": False},
                                    "serviceMonitor": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
    "redis-password": {"feast": {"redis": {"passwordSecret": {"name": "redis", "key": "password"}}}},
}


@pytest.mark.parametrize("case", sorted(CHART_CASES))
def test_chart_renders_and_validates(case):
    docs = helm_render(CHART_CASES[case])
    problems = [p for d in docs for p in validate(d)]
    assert not problems, "\n".join(problems)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 3000, "grpc": 50051}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["image"] == "ghcr.io/longtail-ml/longtail:0.1.0"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    cfg = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["serving.yaml"])
    assert cfg["registry"] == "s3://longtail/registry" and cfg["grpc_port"] == 50051
    kinds = {d["kind"] for d in docs}
    if case == "defaults":
        assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
                "NetworkPolicy", "ConfigMap", "ServiceAccount"} <= kinds
        assert cfg["feature_source"] == "feast"
    if case == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert dep["spec"]["template"]["spec"]["nodeSelector"] == {"longtail.io/pool": "gpu"}
    if case == "raw-features-fixed-replicas":
        assert cfg["feature_source"] == "raw" and dep["spec"]["replicas"] == 2
        assert not {"HorizontalPodAutoscaler", "ServiceMonitor", "PodDisruptionBudget"} & kinds


def test_serving_config_in_the_chart_loads(tmp_path):
    from longtail.online import load_serving_config

    cm = next(d for d in helm_render() if d["kind"] == "ConfigMap")
    (tmp_path / "serving.yaml").write_text(cm["data"]["serving.yaml"])
    cfg = load_serving_config(tmp_path / "serving.yaml", [])
    assert cfg.feature_source == "feast" and cfg.feast_repo == "/etc/longtail/feature_repo"
    assert cfg.workers == 0 and cfg.max_latency_ms == 0  # one worker per CPU of the pod; no batching wait


def test_chart_sets_the_worker_count_when_asked():
    def env(values):
        dep = next(d for d in helm_render(values) if d["kind"] == "Deployment")
        return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert "BENTOML_CONFIG_OPTIONS" not in env({})  # BentoML's workers="cpu_count": the pod's CPU limit
    assert env({"serving": {"workers": 3}})["BENTOML_CONFIG_OPTIONS"] == "services.longtail_serving.workers=3"


@pytest.mark.parametrize("values, where", [
    ({"serving": {"unknownScenario": "maybe"}}, "unknownScenario"),
    ({"image": {"repository": "x", "tag": "latest"}}, "tag"),
    ({"service": {"httpPort": 70000}}, "httpPort"),
    ({"registry": {"uri": "http://nope"}}, "uri"),
    ({"replicas": 3}, "replicas"),
])
def test_values_schema_rejects_bad_values(values, where):
    from helm_python.chart import Chart

    with pytest.raises(Exception, match=where):
        Chart.load(str(CHART)).validate_schema(values)


def test_chart_lints():
    from helm_python.chart import lint

    result = lint(str(CHART), strict=True)
    assert not result["errors"], result
