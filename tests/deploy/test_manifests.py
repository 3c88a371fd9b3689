"""deploy/kubernetes/: schema-valid, listed by the kustomization, and consistent with the code.

Every manifest the kustomization lists (and the example Secret it leaves out) goes through
``kubernetes-validate --strict``, the PyPI package that ships the Kubernetes JSON schemas:
an unknown field or a wrong type fails. kubernetes-validate has no schema for CRDs and
passes them with only a warning ("Couldn't find schema"), so the ServiceMonitor is
validated here against ``servicemonitor-v1.schema.json``, a subset of the Prometheus
Operator's documented ServiceMonitor fields written for these tests, and checked against
the Service it selects. Each check is also run on a broken copy, to show it fails.

deploy/kubernetes-spool/ (the StatefulSet + PersistentVolumeClaim variant, an overlay of
deploy/kubernetes/) gets the same checks, rendered and file by file.

Beyond schemas, the manifests must match the code: the image the Containerfile builds, the
uid it runs as, the ports the ConfigMap's bridge.toml (parsed by the bridge's own parser)
opens, the probe paths the ops listener serves.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bridge import __version__
from bridge.config import load_config, parse_config

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBE_DIR = REPO_ROOT / "deploy" / "kubernetes"
CONTAINERFILE = REPO_ROOT / "deploy" / "container" / "Containerfile"
SCHEMA_SERVICEMONITOR = Path(__file__).with_name("servicemonitor-v1.schema.json")
# Kinds kubernetes-validate has no schema for, and what checks them instead.
CRD_KINDS = {"ServiceMonitor"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())
    return data


def listed_files() -> list[Path]:
    return [KUBE_DIR / name for name in kustomization()["resources"]]


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, over every file the kustomization lists."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in listed_files():
        for doc in load_docs(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def kubernetes_validate(path: Path) -> tuple[int, list[str]]:
    """``kubernetes-validate --strict PATH``: its exit status and output lines."""
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, (result.stdout + result.stderr).splitlines()


def assert_schema_valid(path: Path) -> None:
    """Every resource in `path` is validated (not skipped for want of a schema) and passes."""
    code, lines = kubernetes_validate(path)
    text = "\n".join(lines)
    assert code == 0, text
    assert not any("Couldn't find schema" in line for line in lines), text
    passed = [line for line in lines if " passed for resource " in line]
    assert len(passed) == len(load_docs(path)), text


def write_docs(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return path


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def servicemonitor_problems(monitor: dict[str, Any], services: list[dict[str, Any]]) -> list[str]:
    """Why `monitor` would not scrape the bridge: schema errors, then what it selects."""
    schema = json.loads(SCHEMA_SERVICEMONITOR.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(monitor)
    ]
    if problems:
        return problems
    selector = monitor["spec"]["selector"].get("matchLabels", {})
    selected = [s for s in services if labels_match(selector, s["metadata"].get("labels", {}))]
    if [s["metadata"]["name"] for s in selected] != ["dimse-bridge-metrics"]:
        return [f"selects services {[s['metadata']['name'] for s in selected]}"]
    port_names = {p.get("name") for p in selected[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        if endpoint.get("port") not in port_names:
            problems.append(f"endpoint port {endpoint.get('port')!r} not in {port_names}")
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append(f"endpoint path {endpoint.get('path')!r} is not /metrics")
    return problems


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resources()[("Deployment", "dimse-bridge")]["spec"]["template"]["spec"]
    return spec


def configmap_config(tmp_path: Path) -> Any:
    """The ConfigMap's bridge.toml through the bridge's parser, as the pod would read it.

    The parser requires the ``*_file`` secrets to exist: each must lie in the Secret's mount
    of the Deployment, and is stood in for here by a file of that name under `tmp_path`.
    """
    data = tomllib.loads(resources()[("ConfigMap", "dimse-bridge-config")]["data"]["bridge.toml"])
    container = pod_spec()["containers"][0]
    secrets_dir = Path(
        next(m for m in container["volumeMounts"] if m["name"] == "secrets")["mountPath"]
    )
    auth = data["dicomweb"]["auth"]
    for key in [k for k in auth if k.endswith("_file")]:
        path = Path(auth[key])
        assert path.parent == secrets_dir, f"dicomweb.auth.{key} = {path} is not in {secrets_dir}"
        stand_in = tmp_path / path.name
        stand_in.write_text("example")
        auth[key] = str(stand_in)
    return parse_config(data, "configmap.yaml")


# --------------------------------------------------------------------------- kustomization


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    names = kustomization()["resources"]
    assert "secret.yaml" not in names
    on_disk = {p.name for p in KUBE_DIR.glob("*.yaml")} - {"kustomization.yaml", "secret.yaml"}
    assert set(names) == on_disk, f"listed {sorted(names)}, on disk {sorted(on_disk)}"
    for path in listed_files():
        assert path.is_file(), path
    kinds = {kind for kind, _ in resources()}
    assert "Secret" not in kinds
    assert {"Deployment", "Service", "NetworkPolicy", "ServiceMonitor"} <= kinds


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(KUBE_DIR)]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(KUBE_DIR)]
    return None


def test_kustomization_renders(tmp_path: Path) -> None:
    """Rendered (kustomize, or kubectl's built-in kustomize): the listed resources, no Secret,
    the image named by ``images:``; the rendered core resources pass kubernetes-validate."""
    command = kustomize_command()
    if command is None:
        pytest.skip(
            "neither kustomize nor kubectl is installed: the kustomization is checked "
            "file by file only (test_kustomization_lists_every_manifest_but_the_example_secret)"
        )
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert {(d["kind"], d["metadata"]["name"]) for d in rendered} == set(resources())
    image = next(d for d in rendered if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image == f"dimse-bridge:{__version__}"
    core = [d for d in rendered if d["kind"] not in CRD_KINDS]
    assert_schema_valid(write_docs(tmp_path / "rendered.yaml", core))


# --------------------------------------------------------------------------- schemas


def core_manifests() -> Iterator[Path]:
    for path in [*listed_files(), KUBE_DIR / "secret.yaml"]:
        if not any(doc["kind"] in CRD_KINDS for doc in load_docs(path)):
            yield path


@pytest.mark.parametrize("path", list(core_manifests()), ids=lambda p: p.name)
def test_manifest_passes_kubernetes_validate_strict(path: Path) -> None:
    assert_schema_valid(path)


def test_kubernetes_validate_strict_rejects_a_broken_deployment(tmp_path: Path) -> None:
    """The check above can fail: an unknown field, and a wrong type, each make it fail."""
    deployment = load_docs(KUBE_DIR / "deployment.yaml")
    unknown = copy.deepcopy(deployment)
    unknown[0]["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    code, lines = kubernetes_validate(write_docs(tmp_path / "unknown.yaml", unknown))
    assert code != 0 and "livenessProbes" in "\n".join(lines), lines
    wrong_type = copy.deepcopy(deployment)
    wrong_type[0]["spec"]["replicas"] = "two"
    code, lines = kubernetes_validate(write_docs(tmp_path / "type.yaml", wrong_type))
    assert code != 0, lines
    with pytest.raises(AssertionError):
        assert_schema_valid(write_docs(tmp_path / "wrong.yaml", wrong_type))


def test_servicemonitor_is_valid_and_selects_the_metrics_port() -> None:
    found = resources()
    monitor = found[("ServiceMonitor", "dimse-bridge")]
    services = [doc for (kind, _), doc in found.items() if kind == "Service"]
    assert servicemonitor_problems(monitor, services) == []


def test_servicemonitor_check_rejects_broken_monitors() -> None:
    found = resources()
    monitor = found[("ServiceMonitor", "dimse-bridge")]
    services = [doc for (kind, _), doc in found.items() if kind == "Service"]
    misspelt = copy.deepcopy(monitor)
    misspelt["spec"]["endpoints"][0]["intervall"] = "30s"
    assert any("intervall" in p for p in servicemonitor_problems(misspelt, services))
    bad_duration = copy.deepcopy(monitor)
    bad_duration["spec"]["endpoints"][0]["interval"] = "30 seconds"
    assert servicemonitor_problems(bad_duration, services)
    wrong_port = copy.deepcopy(monitor)
    wrong_port["spec"]["endpoints"][0]["port"] = "http-metrics"
    assert servicemonitor_problems(wrong_port, services) == [
        "endpoint port 'http-metrics' not in {'metrics'}"
    ]
    both_services = copy.deepcopy(monitor)
    del both_services["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
    assert servicemonitor_problems(both_services, services)


# --------------------------------------------------------------------------- semantics


def test_pods_get_no_service_account_token() -> None:
    spec = pod_spec()
    assert spec["automountServiceAccountToken"] is False
    account = resources()[("ServiceAccount", spec["serviceAccountName"])]
    assert account["automountServiceAccountToken"] is False


def test_networkpolicy_dimse_in_metrics_from_monitoring_dicomweb_out(tmp_path: Path) -> None:
    found = resources()
    policy = found[("NetworkPolicy", "dimse-bridge")]["spec"]
    pod_labels = found[("Deployment", "dimse-bridge")]["spec"]["template"]["metadata"]["labels"]
    assert labels_match(policy["podSelector"]["matchLabels"], pod_labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    container_ports = {p["name"]: p["containerPort"] for p in pod_spec()["containers"][0]["ports"]}
    ingress = {
        port["port"]: rule.get("from") for rule in policy["ingress"] for port in rule["ports"]
    }
    assert set(ingress) == {"dimse", "metrics"} <= set(container_ports)
    assert ingress["dimse"] is None  # from any peer the Service lets in
    assert ingress["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    # The DICOMweb server of the ConfigMap is reached on an allowed port.
    url = configmap_config(tmp_path).dicomweb.url
    assert url.startswith("https://") and ":" not in url.removeprefix("https://").split("/")[0]


def test_deployment_matches_the_image_and_the_config(tmp_path: Path) -> None:
    spec = pod_spec()
    container = spec["containers"][0]
    # The image the Containerfile builds, by the name README and build-offline.sh give it.
    assert container["image"] == f"dimse-bridge:{__version__}"
    images = kustomization()["images"]
    assert images == [{"name": "dimse-bridge", "newTag": __version__}]
    # The image's entry point is `dimse-bridge run`: the pod passes arguments only.
    assert "command" not in container
    assert container["args"][0] == "--config"
    config_path = Path(container["args"][1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(config_path.parent) == mounts["config"]
    assert config_path.name in resources()[("ConfigMap", "dimse-bridge-config")]["data"]
    # The uid/gid the image creates.
    text = CONTAINERFILE.read_text()
    uid = re.search(r"useradd .*--uid (\d+) --gid (\d+)", text.replace("\\\n", " "))
    assert uid is not None
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (
        int(uid.group(1)),
        int(uid.group(2)),
    )
    # The ports the config opens, and the paths the ops listener serves.
    config = configmap_config(tmp_path)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["dimse"] == config.dimse.port
    assert ports["metrics"] == int(config.ops.listen.rpartition(":")[2])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_the_image_config_enables_the_ops_listener() -> None:
    """deploy/container/bridge.toml, baked into the image: parsed by the bridge, ops on."""
    config = load_config(REPO_ROOT / "deploy" / "container" / "bridge.toml")
    assert config.ops.listen == "0.0.0.0:9090"
    exposed = re.search(r"^EXPOSE (.+)$", CONTAINERFILE.read_text(), re.MULTILINE)
    assert exposed is not None
    assert set(exposed.group(1).split()) == {str(config.dimse.port), "9090"}


def test_no_document_mentions_a_codecs_extra() -> None:
    """The codecs are core dependencies (pyproject.toml): there is no ``[codecs]`` extra."""
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert "codecs" not in extras
    documents = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "deploy").rglob("*"))]
    for path in documents:
        if path.is_file() and path.suffix in {".md", ".yaml", ".service", ".sh", ""}:
            assert "[codecs]" not in path.read_text(errors="replace"), path


# --------------------------------------------------------------------------- spool variant

SPOOL_DIR = REPO_ROOT / "deploy" / "kubernetes-spool"


def spool_variant_files() -> list[Path]:
    data: dict[str, Any] = yaml.safe_load((SPOOL_DIR / "kustomization.yaml").read_text())
    listed = [SPOOL_DIR / name for name in data["resources"] if not name.startswith("..")]
    return listed + [SPOOL_DIR / patch["path"] for patch in data["patches"] if "path" in patch]


def test_spool_variant_lists_its_files() -> None:
    on_disk = {p.name for p in SPOOL_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert {p.name for p in spool_variant_files()} == on_disk


@pytest.mark.parametrize("path", spool_variant_files(), ids=lambda p: p.name)
def test_spool_variant_manifest_passes_kubernetes_validate_strict(path: Path) -> None:
    assert_schema_valid(path)


def parsed_bridge_toml(configmap: dict[str, Any], tmp_path: Path) -> Any:
    """A ConfigMap's bridge.toml through the bridge's parser (secret files stood in for)."""
    data = tomllib.loads(configmap["data"]["bridge.toml"])
    auth = data["dicomweb"]["auth"]
    for key in [k for k in auth if k.endswith("_file")]:
        stand_in = tmp_path / Path(auth[key]).name
        stand_in.write_text("example")
        auth[key] = str(stand_in)
    return parse_config(data, "configmap")


def test_spool_variant_config_is_the_base_plus_a_spool_store(tmp_path: Path) -> None:
    """configmap-spool.yaml's bridge.toml parses, is in spool mode on the volume, and
    differs from the base ConfigMap's only by [store]."""
    base = parsed_bridge_toml(resources()[("ConfigMap", "dimse-bridge-config")], tmp_path)
    spool = parsed_bridge_toml(load_docs(SPOOL_DIR / "configmap-spool.yaml")[0], tmp_path)
    assert spool.store.mode == "spool"
    assert spool.store.max_spool_bytes + spool.store.min_free_bytes < 20 * 2**30
    assert replace(spool, store=base.store, source="") == replace(base, source="")


def test_spool_variant_renders_a_statefulset_with_a_volume_per_pod(tmp_path: Path) -> None:
    """Rendered (kubectl kustomize): the base's resources with the Deployment replaced by
    a StatefulSet whose pods mount their own PersistentVolumeClaim at store.spool_dir,
    named by a headless governing Service; kubernetes-validate --strict passes."""
    if shutil.which("kubectl") is None and shutil.which("kustomize") is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    command = (
        ["kustomize", "build", str(SPOOL_DIR)]
        if shutil.which("kustomize")
        else ["kubectl", "kustomize", str(SPOOL_DIR)]
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = {
        (d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d
    }
    expected = set(resources()) - {("Deployment", "dimse-bridge")}
    expected |= {("StatefulSet", "dimse-bridge"), ("Service", "dimse-bridge-pods")}
    assert set(rendered) == expected
    core = [d for (kind, _), d in rendered.items() if kind not in CRD_KINDS]
    assert_schema_valid(write_docs(tmp_path / "rendered.yaml", core))
    sts = rendered[("StatefulSet", "dimse-bridge")]["spec"]
    governing = rendered[("Service", sts["serviceName"])]["spec"]
    assert governing["clusterIP"] == "None"
    config = parsed_bridge_toml(rendered[("ConfigMap", "dimse-bridge-config")], tmp_path)
    assert config.store.mode == "spool"
    container = sts["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (claim,) = sts["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == config.store.spool_dir
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    # The rest of the pod is the Deployment's: image, arguments, ports, probes, user.
    base_container = pod_spec()["containers"][0]
    for key in ("image", "args", "ports", "livenessProbe", "readinessProbe", "securityContext"):
        assert container[key] == base_container[key], key
    assert sts["template"]["spec"]["securityContext"] == pod_spec()["securityContext"]
    assert labels_match(
        rendered[("PodDisruptionBudget", "dimse-bridge")]["spec"]["selector"]["matchLabels"],
        sts["template"]["metadata"]["labels"],
    )
