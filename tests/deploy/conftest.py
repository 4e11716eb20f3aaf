"""Tools the chart tests need, built or fetched here when missing (no cluster, no registry).

- ``helm``: ``deploy/ensure-helm.sh`` builds it from its Go module with the machine's Go
  toolchain into a per-user cache outside the repository (``~/.cache/email-channels/tools/
  helm-<version>``; a few minutes the first time, then shared by every clone). Tests skip only
  when ``go`` is absent and no binary is cached.
- KEDA's CRDs: from KEDA's Go module (``go mod download``), the source of its released CRDs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "email-channels"
VERSIONS = dict(
    line.split("=", 1)
    for line in (ROOT / "deploy" / "tool-versions.env").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)
KEDA_MODULE = VERSIONS["KEDA_MODULE"]
PROMETHEUS_OPERATOR_MODULE = VERSIONS["PROMETHEUS_OPERATOR_MODULE"]
KUBE_VERSION = VERSIONS["KUBE_VERSION"]


def _go() -> str:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        pytest.skip("the Go toolchain is needed to build helm and fetch KEDA's CRDs")
    return go


@pytest.fixture(scope="session")
def helm() -> Path:
    ensure = ROOT / "deploy" / "ensure-helm.sh"
    try:
        found = subprocess.run(
            [str(ensure)], check=True, timeout=1200, capture_output=True, text=True
        )
    except subprocess.CalledProcessError as exc:
        if "go is needed" in exc.stderr:
            pytest.skip("the Go toolchain is needed to build helm")
        raise
    return Path(found.stdout.strip())


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``args``; the rendered documents."""
    result = subprocess.run(
        [
            str(helm),
            "template",
            "ec",
            str(CHART),
            "--namespace",
            "email",
            "--kube-version",
            KUBE_VERSION,
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def default_manifests(helm: Path) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="session")
def production_manifests(helm: Path) -> list[dict[str, Any]]:
    return render(helm, "-f", str(CHART / "values-production.yaml"))


class _CrdLoader(yaml.CSafeLoader):
    """SafeLoader that reads YAML 1.1's ``=`` (value key) as the string it is in CRD enums."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: node.value)


def crd_schemas(module: str, directory: str, *patterns: str) -> dict[str, dict[str, Any]]:
    """kind -> openAPIV3Schema of the served version of the CRDs a Go module ships."""
    result = subprocess.run(
        [_go(), "mod", "download", "-json", module],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=ROOT,
    )
    bases = Path(json.loads(result.stdout)["Dir"]) / directory
    schemas: dict[str, dict[str, Any]] = {}
    for path in (path for pattern in patterns for path in bases.glob(pattern)):
        crd = yaml.load(path.read_text(), Loader=_CrdLoader)
        [version] = [v for v in crd["spec"]["versions"] if v["served"]]
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.fixture(scope="session")
def keda_crds() -> dict[str, dict[str, Any]]:
    """KEDA's released CRDs (config/crd/bases of its Go module)."""
    return crd_schemas(KEDA_MODULE, "config/crd/bases", "keda.sh_*.yaml")


@pytest.fixture(scope="session")
def monitoring_crds() -> dict[str, dict[str, Any]]:
    """The Prometheus operator's CRDs (ServiceMonitor, PrometheusRule) from its Go module."""
    return crd_schemas(
        PROMETHEUS_OPERATOR_MODULE,
        "example/prometheus-operator-crd",
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    )
