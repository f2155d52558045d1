"""Offline checks of the federation manifests in ``deploy/k8s/federation/`` (as tests/test_deploy.py does for the
factory's): strict Kubernetes schema validation, and the security properties the federation relies on."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

FEDERATION = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "federation"
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
DOCS = [
    (path.name, doc)
    for path in sorted(FEDERATION.glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc is not None
]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", [d for _, d in DOCS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS])
def test_federation_manifest_validates(doc: dict, version: str):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} invalid for {version}: {err.message}") from None


def _objects(kind: str) -> list[dict]:
    return [d for _, d in DOCS if d["kind"] == kind]


def test_superlink_requires_tls_and_registered_supernodes():
    (link,) = [d for d in _objects("Deployment") if d["metadata"]["name"] == "superlink"]
    args = link["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--enable-supernode-auth" in args and "--insecure" not in args
    assert {a.split("=")[0] for a in args} >= {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"}
    assert "--disable-runtime-dependency-installation" in args


def test_each_site_keeps_its_data_in_its_own_namespace():
    nodes = [d for d in _objects("Deployment") if d["metadata"]["name"] == "supernode"]
    sites = {n["metadata"]["namespace"] for n in nodes}
    assert sites == {d["metadata"]["name"] for d in _objects("Namespace")} and len(sites) >= 2
    for node in nodes:
        spec = node["spec"]["template"]["spec"]
        args = spec["containers"][0]["args"]
        assert "--insecure" not in args and any(a.startswith("--auth-supernode-private-key=") for a in args)
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"site-data"}, "a site mounts only its own volume"
        assert spec["nodeSelector"] == {"histofactory/site": node["metadata"]["namespace"]}
    claims = _objects("PersistentVolumeClaim")
    assert {c["metadata"]["namespace"] for c in claims} == sites, "site volumes exist only in site namespaces"
    policies = {p["metadata"]["namespace"] for p in _objects("NetworkPolicy")}
    assert policies == sites
