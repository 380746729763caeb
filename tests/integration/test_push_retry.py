"""Every upload of a push goes through one retry policy; one stated deadline per command."""

from __future__ import annotations

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
