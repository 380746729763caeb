"""One provider name: every path opens every image the project can publish, under either annotation.

An image "published by skopeo through our keyprovider config" is made exactly as ocicrypt
makes it: the layer is encrypted, the private options go to the keyprovider as a keywrap
request, and the reply's annotation is stored under ``enc.keys.provider.<config name>``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.images import make_image, manifest_of
from integration.keyprovider.conftest import World
from layerseal.builder.copy import CopyOptions, copy_image
from layerseal.cli import keyprovider as kpcli
from layerseal.crypto.keywrap import LayerContext
from layerseal.image.encryption import PrivateOptions
from layerseal.keyprovider import protocol
from layerseal.keyprovider.params import Settings
from layerseal.keyprovider.provider import Provider
from layerseal.layout.oci import LayoutDestination, LayoutReference, LayoutSource

pytestmark = pytest.mark.integration
LAYERSEAL = [sys.executable, "-m", "layerseal.cli.main"]


class OcicryptProviderWrapper:
    """What Go ocicrypt does for ``--encryption-key provider:NAME``: keywrap via the provider."""

    def __init__(self, provider: Provider, name: str) -> None:
        self.provider, self.name = provider, name
        self.scheme = f"provider.{name}"

    def wrap(self, opts: PrivateOptions, layer: LayerContext) -> bytes:
        request = {
            "op": "keywrap",
            "keywrapparams": {
                "ec": {"Parameters": {self.name: [base64.b64encode(b"Enabled").decode()]}},
                "optsdata": base64.b64encode(opts.to_json_bytes()).decode(),
            },
        }
        return protocol.parse_reply(self.provider.handle(json.dumps(request).encode()), protocol.OP_WRAP)


def publish_as_skopeo(world: World, tmp_path: Path, name: str) -> Path:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "zstd"), big=2000)
    provider = Provider(
        name, Settings(kbs=world.broker.url, repo="acme/app", token_file=str(world.token_file))
    )
    src = LayoutSource(LayoutReference.parse(f"oci:{tmp_path}/src:v1"))
    dst = LayoutDestination(LayoutReference.parse(f"oci:{tmp_path}/enc:v1"))
    try:
        copy_image(src, dst, CopyOptions(wrappers=(OcicryptProviderWrapper(provider, name),)))
    finally:
        src.close()
        dst.close()
        provider.close()
    return tmp_path / "enc"


def pull(world: World, tmp_path: Path, ref: str) -> subprocess.CompletedProcess[str]:
    cmd = [*LAYERSEAL, "pull", "--kbs", world.broker.url, "--sim-platform", str(world.platform)]
    cmd += ["--store", str(tmp_path / "store"), "--rootfs", str(tmp_path / "rootfs"), ref]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSEAL_")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_keyprovider_config_default_name_is_the_one_copy_kbs_writes() -> None:
    from layerseal.builder.kbswrap import SCHEME

    args = argparse_ns("config", "--grpc", "127.0.0.1:1")
    (name,) = kpcli.ocicrypt_config(args)["key-providers"]
    assert SCHEME == f"provider.{name}" == "provider.attestation-agent"


def argparse_ns(*argv: str) -> object:
    import argparse

    p = argparse.ArgumentParser()
    kpcli.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("name", ["attestation-agent", "layerseal"])
def test_pull_and_rotate_open_images_published_through_the_keyprovider(
    kp_world: World, tmp_path: Path, name: str
) -> None:
    """``layerseal`` was the keyprovider's earlier default name: its images still open."""
    world = kp_world
    enc = publish_as_skopeo(world, tmp_path, name)
    layers = manifest_of(enc, "v1")[1]["layers"]
    assert all(f"org.opencontainers.image.enc.keys.provider.{name}" in x["annotations"] for x in layers)  # type: ignore[attr-defined]
    r = pull(world, tmp_path, f"oci:{enc}:v1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "rootfs").iterdir()) == ["data", "layer0.txt", "layer1.txt"]

    env = {**os.environ, "LAYERSEAL_KBS_TOKEN": world.token}
    rot = subprocess.run(
        [
            *LAYERSEAL,
            "keys",
            "rotate",
            "--json",
            "--kbs",
            world.broker.url,
            f"oci:{enc}:v1",
            f"oci:{tmp_path}/rot:v1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert rot.returncode == 0, rot.stderr
    assert len(json.loads(rot.stdout)["rotated"]) == 2
    rotated = manifest_of(tmp_path / "rot", "v1")[1]["layers"]
    key = f"org.opencontainers.image.enc.keys.provider.{name}"
    assert all(x["annotations"][key] != y["annotations"][key] for x, y in zip(layers, rotated, strict=True))  # type: ignore[index, call-overload]
    (tmp_path / "rootfs").rename(tmp_path / "rootfs-before")
    r2 = pull(world, tmp_path, f"oci:{tmp_path}/rot:v1")
    assert r2.returncode == 0, r2.stderr


def test_keyprovider_opens_copy_kbs_images(kp_world: World, tmp_path: Path) -> None:
    """An image from ``copy --encryption-key kbs:`` opens through the default keyprovider name."""
    world = kp_world
    from layerseal.cli.main import main

    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",), big=2000)
    args = ["copy", "-q", "--encryption-key", f"kbs:{world.broker.url}", "--kbs-token", world.token]
    assert main([*args, f"oci:{tmp_path}/src:v1", f"oci:{tmp_path}/enc:v1"]) == 0
    (layer,) = manifest_of(tmp_path / "enc", "v1")[1]["layers"]  # type: ignore[misc]
    (name,) = kpcli.ocicrypt_config(argparse_ns("config", "--grpc", "127.0.0.1:1"))["key-providers"]
    annotation = layer["annotations"][f"org.opencontainers.image.enc.keys.provider.{name}"]
    request = {
        "op": "keyunwrap",
        "keyunwrapparams": {"dc": {"Parameters": {name: ["RW5hYmxlZA=="]}}, "annotation": annotation},
    }
    provider = Provider(name, Settings(kbs=world.broker.url, sim_platform=str(world.platform)))
    try:
        opts = protocol.parse_reply(provider.handle(json.dumps(request).encode()), protocol.OP_UNWRAP)
    finally:
        provider.close()
    assert PrivateOptions.from_json_bytes(opts).symkey
