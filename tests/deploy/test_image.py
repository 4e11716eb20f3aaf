"""The container image builds from deploy/Dockerfile and every entry point runs in it.

No registry is reachable here, so the base image is built from Debian's packages (debootstrap:
bookworm, python3 3.11, python3-venv, ca-certificates) and imported into buildah; the
Dockerfile is then built on it with ``PYTHON_IMAGE`` pointing there, and each entry point's
``--help`` runs inside the image as its non-root user. Minutes of work: ``make image-test``
runs it (``EMAIL_CHANNELS_IMAGE_TEST=1``, root, buildah and debootstrap from
``WITH_IMAGE_BUILDER=1 deploy/bootstrap.sh``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .conftest import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [
    pytest.mark.image,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.environ.get("EMAIL_CHANNELS_IMAGE_TEST") != "1",
        reason="image build takes minutes: make image-test (EMAIL_CHANNELS_IMAGE_TEST=1)",
    ),
]

BASE = "localhost/email-channels-base:bookworm"
IMAGE = "localhost/email-channels:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
ENTRY_POINTS = ("fetcher", "router", "sender", "config-api")


def buildah(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", "--storage-driver", "vfs", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def ensure_base_image() -> None:
    if buildah("inspect", "--type", "image", BASE).returncode == 0:
        return
    rootfs = ROOT / "var" / "image" / "rootfs"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                "http://deb.debian.org/debian",
            ],
            check=True,
            capture_output=True,
            timeout=1200,
        )
    container = buildah("from", "scratch").stdout.strip()
    tarball = rootfs.parent / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True, timeout=300)
    for step in (
        ("add", container, str(tarball), "/"),
        (
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            container,
        ),
        ("commit", container, BASE),
        ("rm", container),
    ):
        result = buildah(*step)
        assert result.returncode == 0, result.stderr
    tarball.unlink()


@pytest.fixture(scope="module")
def image() -> str:
    if os.geteuid() != 0 or not (shutil.which("buildah") and shutil.which("debootstrap")):
        pytest.fail("needs root, buildah and debootstrap: WITH_IMAGE_BUILDER=1 deploy/bootstrap.sh")
    ensure_base_image()
    proxy_ca: list[str] = []
    if HOST_CA.exists():  # this machine's outbound TLS is re-signed by a proxy CA it trusts
        proxy_ca = [
            "--volume",
            f"{HOST_CA}:/run/host-ca.crt:ro",
            "--build-arg",
            "SSL_CERT_FILE=/run/host-ca.crt",
            "--build-arg",
            "PIP_CERT=/run/host-ca.crt",
        ]
    result = buildah(
        "bud",
        "--isolation",
        "chroot",
        "--layers=false",
        "-f",
        str(ROOT / "deploy" / "Dockerfile"),
        "--build-arg",
        f"PYTHON_IMAGE={BASE}",
        *proxy_ca,
        "-t",
        IMAGE,
        str(ROOT),
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return IMAGE


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    """One working container of the image (with vfs storage each one is a full copy)."""
    name = buildah("from", image).stdout.strip()
    yield name
    buildah("rm", name)


def run_in(container: str, *command: str) -> subprocess.CompletedProcess[str]:
    return buildah("run", "--isolation", "chroot", container, "--", *command, timeout=120)


def test_every_entry_point_answers_help_in_the_image(container):
    """fetcher, router, sender and config-api print their usage and settings in the image."""
    for command in ENTRY_POINTS:
        result = run_in(container, command, "--help")
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert f"usage: {command}" in result.stdout
        assert "KAFKA_BOOTSTRAP_SERVERS" in result.stdout
        assert "EMAIL_CHANNELS_SECRET_KEYS" in result.stdout


def test_the_cli_runs_as_the_unprivileged_user(image, container):
    """`email-channels version` lists the installed packages; the image runs as uid 10001."""
    version = run_in(container, "email-channels", "version")
    assert version.returncode == 0, version.stderr
    assert "email-channels-cli 0.1.0" in version.stdout
    assert run_in(container, "id", "-u").stdout.strip() == "10001"
    config = buildah("inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", image)
    assert config.stdout.strip() == "10001:10001"


def test_the_image_holds_no_dev_tools_nor_devstack(container):
    """Only the locked runtime dependencies: no pytest, ruff, mypy or devstack in the venv."""
    result = run_in(
        container,
        "python3",
        "-c",
        "import importlib.util as u; print([m for m in ('pytest','ruff','mypy',"
        "'devstack','testcontainers') if u.find_spec(m)])",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
