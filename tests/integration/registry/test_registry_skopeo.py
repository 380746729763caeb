"""Interoperability with the real skopeo: each side pulls what the other pushed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from registry_helpers import fast_options, pull_image, push_image

from layerseal.registry import open_registry_destination, open_registry_source
from support.oci_images import make_image, read_oci_layout, write_oci_layout
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration


def _skopeo(skopeo: str, *args: str) -> None:
    proc = subprocess.run(
        [skopeo, "--insecure-policy", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"skopeo {' '.join(args)} failed:\n{proc.stderr}"


def test_we_pull_what_skopeo_pushed(registry: RegistryServer, skopeo: str, tmp_path: Path) -> None:
    image = make_image([{"etc/os-release": b"ID=test\n"}, {"usr/bin/app": os.urandom(100_000)}])
    write_oci_layout(tmp_path / "layout", image, "v1")
    target = f"docker://{registry.host}/skopeo/pushed:v1"
    _skopeo(skopeo, "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:v1", target)
    with open_registry_source(target, fast_options(tls_verify=False)) as src:
        manifest, blobs = pull_image(src)
        assert src.list_tags() == ["v1"]
    assert manifest == image.manifest
    assert blobs == image.blobs


def test_skopeo_pulls_what_we_pushed(registry: RegistryServer, skopeo: str, tmp_path: Path) -> None:
    image = make_image([{"hello.txt": b"from layerseal\n"}, {"data.bin": os.urandom(70_000)}])
    source = f"docker://{registry.host}/layerseal/pushed:v2"
    with open_registry_destination(source, fast_options(tls_verify=False)) as dst:
        push_image(dst, image)
    out = tmp_path / "pulled"
    _skopeo(skopeo, "copy", "--src-tls-verify=false", source, f"oci:{out}:v2")
    manifest, blobs = read_oci_layout(out, "v2")
    assert manifest == image.manifest
    assert blobs == image.blobs
