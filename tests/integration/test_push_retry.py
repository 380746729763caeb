"""Every upload of a push goes through one retry policy; one stated deadline per command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.images import make_image, manifest_of
from helpers.registry import registry_blobs
from layerseal.cli.main import main
from support.fault_proxy import Fault, FaultProxy
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration


def _config_digest(layout: Path) -> str:
    _, manifest = manifest_of(layout, "v1")
    config = manifest["config"]
    assert isinstance(config, dict)
    return str(config["digest"])


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", path="", method="PUT", status=500),
        Fault("cut_request", path="", method="PUT", cut_after=10),
    ],
    ids=["http-500", "cut"],
)
def test_config_upload_is_retried(tmp_path: Path, registry: RegistryServer, fault: Fault) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",))
    config = _config_digest(tmp_path / "src")
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        fault.path = f"/blobs/uploads/.*digest={config.replace(':', '(:|%3A)')}"
        proxy.add(fault)
        status = main(
            [
                "copy",
                "-q",
                "--dest-tls-verify=false",
                f"oci:{tmp_path}/src:v1",
                f"docker://{proxy.host}/t/c:v1",
            ]
        )
    assert fault.hits == 1
    assert status == 0
    assert config.split(":")[1] in registry_blobs(registry)


LAYERSEAL = [sys.executable, "-m", "layerseal.cli.main"]


def _copy(tmp_path: Path, dest: str, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [*LAYERSEAL, "copy", "-q", "--dest-tls-verify=false", *flags, f"oci:{tmp_path}/src:v1", dest]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90)


def test_retry_after_is_announced_on_stderr_even_when_quiet(tmp_path: Path, registry: RegistryServer) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",))
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        busy = proxy.add(Fault("status", path="/manifests/", method="PUT", status=429, retry_after="1"))
        r = _copy(tmp_path, f"docker://{proxy.host}/t/ra:v1")
    assert busy.hits == 1
    assert r.returncode == 0, r.stderr
    assert "HTTP 429, Retry-After 1; waiting 1s before attempt 2 of 5" in r.stderr
    assert registry_manifest_tags(registry) == ["v1"]


def test_a_long_retry_after_fails_at_once_against_the_deadline(
    tmp_path: Path, registry: RegistryServer
) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",))
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        proxy.add(Fault("status", path="/manifests/", method="PUT", status=429, retry_after="600", times=10))
        r = _copy(tmp_path, f"docker://{proxy.host}/t/ra:v1", "--timeout", "45s")
        puts = [x for x in proxy.requests if x.method == "PUT" and "/manifests/" in x.path]
    assert r.returncode == 4
    line = r.stderr.strip().splitlines()[-1]
    assert "HTTP 429, Retry-After 600" in line and "the deadline of 45s (--timeout)" in line, r.stderr
    assert len(puts) == 1  # no wait, no second try: the deadline could not be met
    assert registry_manifest_tags(registry) == []


def test_retry_times_bounds_the_attempts(tmp_path: Path, registry: RegistryServer) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",))
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        proxy.add(Fault("status", path="/manifests/", method="PUT", status=503, times=10))
        r = _copy(tmp_path, f"docker://{proxy.host}/t/rt:v1", "--retry-times", "1")
        puts = [x for x in proxy.requests if x.method == "PUT" and "/manifests/" in x.path]
    assert r.returncode == 4, r.stderr
    assert len(puts) == 2


def registry_manifest_tags(reg: RegistryServer) -> list[str]:
    root = reg.storage / "docker" / "registry" / "v2" / "repositories"
    return sorted(p.parent.name for p in root.glob("*/*/_manifests/tags/*/current"))
