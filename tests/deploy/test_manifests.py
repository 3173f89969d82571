"""deploy/kubernetes is well-formed: every document parses and names itself, the Deployment is
hardened, its Secret and ConfigMap references exist, and the bot's config passes check-config."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.check import check
from config.settings import KubernetesTarget
from tests.conftest import require_program

DEPLOY = Path(__file__).parents[2] / "deploy" / "kubernetes"
CONFIG = DEPLOY / "config" / "opsbot.yaml"
NOT_MANIFESTS = {"kustomization.yaml", "opsbot.yaml"}
# Applied on its own: `kubectl delete -k` must never delete the namespaces of the workloads.
APPLIED_ALONE = {"target-namespaces.yaml"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name in NOT_MANIFESTS:
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def test_every_document_names_its_api_version_kind_and_name() -> None:
    docs = _documents()
    assert len(docs) >= 10
    for file, doc in docs:
        assert isinstance(doc, dict), file
        assert doc.get("apiVersion") and doc.get("kind"), file
        assert doc.get("metadata", {}).get("name"), f"{file}: {doc['kind']} without a name"
        if doc["kind"] not in ("Namespace",):
            assert doc["metadata"].get("namespace"), f"{file}: {doc['kind']} without a namespace"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - NOT_MANIFESTS - APPLIED_ALONE
    assert set(kustomization["resources"]) == files
    generated = kustomization["configMapGenerator"][0]
    assert generated["name"] == "opsbot-config"
    assert generated["files"] == ["opsbot.yaml=config/opsbot.yaml"]


def test_the_deployment_is_hardened_and_highly_available() -> None:
    deployment = _one("Deployment")
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    assert spec["replicas"] == 2
    assert pod["serviceAccountName"] == "opsbot"
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["affinity"]["podAntiAffinity"] and pod["topologySpreadConstraints"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert [container.get("command", []) + container["args"]] == [
        ["opsbot", "run", "--config", "/etc/opsbot/opsbot.yaml"]]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/data"]]
    assert volumes[mounts["/etc/opsbot"]]["configMap"]["name"] == "opsbot-config"

    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    secrets = {name: ref["secretKeyRef"]["key"] for name, ref in env.items() if "secretKeyRef" in ref}
    assert secrets == {"OPSBOT_DISCORD_TOKEN": "discord-token",
                       "OPSBOT_WEBHOOK_TOKEN": "webhook-token",
                       "OPSBOT_DATABASE_URL": "database-url"}
    assert {ref["secretKeyRef"]["name"] for ref in env.values() if "secretKeyRef" in ref} == \
        {"opsbot-secrets"}
    readme = (DEPLOY / "README.md").read_text()
    for key in secrets.values():  # the README's `kubectl create secret` names every key
        assert f"--from-literal={key}=" in readme or f"--from-file={key}=" in readme


def test_service_pdb_and_network_policy_select_the_bot() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service, pdb, policy = _one("Service"), _one("PodDisruptionBudget"), _one("NetworkPolicy")
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                     policy["spec"]["podSelector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 8080
    assert pdb["spec"]["minAvailable"] == 1
    ingress_ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ingress_ports == [8080]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 5432} <= egress_ports


def test_the_config_passes_check_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OPSBOT_"):
            monkeypatch.delenv(name)
    # As the pod sees it: with the environment the Deployment gives it (values from its Secret).
    deployment = next(doc for _, doc in _documents() if doc["kind"] == "Deployment")
    secret_values = {"database-url": "postgresql+psycopg://opsbot:secret@postgres.db:5432/opsbot"}
    for var in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
        if var["name"].startswith("OPSBOT_"):
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            value = secret_values.get(ref["key"], "from-the-secret") if ref else var.get("value")
            if value is not None:
                monkeypatch.setenv(var["name"], value)
    result = check(CONFIG)
    assert result.ok, result.render()
    assert not result.warnings, result.render()
    settings = result.settings
    assert settings is not None and settings.kubeconfig is None  # in-cluster
    assert settings.ha.enabled and settings.ha.lease_namespace == "opsbot"
    namespaces = {t.namespace for s in settings.services.values() for t in s.envs.values()
                  if isinstance(t, KubernetesTarget)}
    roles = {doc["metadata"]["namespace"] for _, doc in _documents()
             if doc["kind"] == "Role" and doc["metadata"]["name"] == "opsbot-deployer"}
    assert namespaces == roles  # every managed namespace has its Role, and no other
    leases = next(doc for _, doc in _documents() if doc["kind"] == "Role"
                  and doc["metadata"]["namespace"] == settings.ha.lease_namespace)
    assert [settings.ha.lease_name] in [r.get("resourceNames") for r in leases["rules"]]


def test_kustomize_renders_the_config_map_the_deployment_mounts() -> None:
    kubectl = require_program("kubectl")
    rendered = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    name = config_map["metadata"]["name"]
    assert name.startswith("opsbot-config-")  # the content hash: a config change rolls the pods
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": name}} in volumes
    assert config_map["data"]["opsbot.yaml"] == CONFIG.read_text()


def _managed_namespaces() -> set[str]:
    from config.settings import load_settings

    settings = load_settings(CONFIG)
    return {t.namespace for svc in settings.services.values() for t in svc.envs.values()
            if isinstance(t, KubernetesTarget)}


def test_every_managed_namespace_enforces_the_restricted_pod_security_standard() -> None:
    namespaces = {doc["metadata"]["name"]: doc["metadata"].get("labels", {})
                  for file, doc in _documents() if doc["kind"] == "Namespace"}
    managed = _managed_namespaces()
    assert managed and set(namespaces) == managed | {"opsbot"}
    for name, labels in namespaces.items():
        assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", name
        assert labels.get("pod-security.kubernetes.io/enforce-version") == "latest", name
    targets = [doc for file, doc in _documents() if file == "target-namespaces.yaml"]
    assert {d["metadata"]["name"] for d in targets} == managed


def test_egress_to_the_database_and_the_api_server_is_narrowed() -> None:
    egress = _one("NetworkPolicy")["spec"]["egress"]
    for rule in egress:
        ports = {p["port"] for p in rule["ports"]}
        if not rule.get("to"):
            assert ports == {443}, f"open to any address: {ports}"  # Discord's addresses are not fixed
    by_port = {p["port"]: rule for rule in egress for p in rule["ports"]}
    (api,) = by_port[6443]["to"]
    assert set(api) == {"ipBlock"} and api["ipBlock"]["cidr"].endswith("/32")
    (db,) = by_port[5432]["to"]
    assert db["podSelector"]["matchLabels"]
    # The namespace is the one of the database URL the README tells you to put in the Secret.
    readme = (DEPLOY / "README.md").read_text()
    host = re.search(r"database-url='postgresql\+psycopg://[^@]+@([^:/]+):5432/", readme)
    assert host, "README.md shows no database-url"
    assert db["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": host.group(1).split(".")[1]}
