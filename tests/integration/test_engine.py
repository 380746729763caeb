"""The enclave engine end to end: registry -> shared store -> verified decrypt -> rootfs -> runc."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers.images import make_busybox_image, make_image, make_keys
from layerseal.cli.main import main
from layerseal.layout.oci import LayoutDestination, LayoutReference
from support.fault_proxy import FaultProxy
from support.layerseal_cli import pull_in_parallel
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration
LAYERSEAL = [sys.executable, "-m", "layerseal.cli.main"]


def push_encrypted(tmp_path: Path, registry_host: str, *, layers: int = 3) -> tuple[str, Path]:
    make_busybox_image(f"oci:{tmp_path}/img:v1", extra_layers=layers - 1)
    key = make_keys(tmp_path / "keys", "ec256")
    ref = f"docker://{registry_host}/enclave/app:v1"
    args = ["copy", "-q", "--dest-tls-verify=false", "--encryption-key", f"jwe:{key.public}"]
    assert main([*args, f"oci:{tmp_path}/img:v1", ref]) == 0
    return ref, key.private


def test_pull_and_run_with_runc(tmp_path: Path, registry: RegistryServer) -> None:
    ref, key = push_encrypted(tmp_path, registry.host)
    r = subprocess.run(
        [
            *LAYERSEAL,
            "run",
            "--src-tls-verify=false",
            "--decryption-key",
            str(key),
            "--store",
            str(tmp_path / "store"),
            "--snapshots",
            str(tmp_path / "snaps"),
            ref,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello from the enclave"
    r = subprocess.run(
        [
            *LAYERSEAL,
            "run",
            "--src-tls-verify=false",
            "--decryption-key",
            str(key),
            "--store",
            str(tmp_path / "store"),
            "--snapshots",
            str(tmp_path / "snaps"),
            ref,
            "--",
            "/bin/sh",
            "-c",
            "cat /data/file0.txt; exit 9",
        ],
        capture_output=True,
        text=True,
    )
    assert (r.returncode, r.stdout) == (9, "layer 1\n"), r.stderr
    assert not list(Path("/tmp").glob("layerseal-bundle-*"))
    # the run's bundle (a decrypted rootfs) lives in the cache's private storage, and is removed
    assert (tmp_path / "snaps" / "bundles").is_dir() and not any((tmp_path / "snaps" / "bundles").iterdir())


def test_two_engines_fetch_each_blob_once(tmp_path: Path, registry: RegistryServer) -> None:
    _, key = push_encrypted(tmp_path, registry.host, layers=4)
    host, port = registry.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        ref = f"docker://{proxy.host}/enclave/app:v1"
        store = tmp_path / "shared-store"
        codes, outs = pull_in_parallel(
            ref,
            key,
            store=store,
            snapshots=lambda n: tmp_path / f"snap{n}",
            rootfs=lambda n: tmp_path / f"rootfs{n}",
            options=("--src-tls-verify=false",),
        )
        assert all(code == 0 for code in codes), [o[1] for o in outs]
        blob_gets: dict[str, int] = {}
        for seen in proxy.requests:
            if seen.method == "GET" and "/blobs/sha256:" in seen.path:
                digest = seen.path.rsplit("/", 1)[-1]
                blob_gets[digest] = blob_gets.get(digest, 0) + 1
    results = [json.loads(o[0]) for o in outs]
    layer_digests = {layer["digest"] for layer in results[0]["layers"]}
    assert all(blob_gets.get(d) == 1 for d in layer_digests), blob_gets  # each shared blob fetched once
    fetched = [sum(layer["fetched"] for layer in r["layers"]) for r in results]
    assert sum(fetched) == len(layer_digests)
    for n in range(2):
        assert (tmp_path / f"rootfs{n}" / "app" / "hello.sh").read_bytes().startswith(b"#!/bin/sh")


def test_tampered_blob_in_shared_store_is_refetched(tmp_path: Path, registry: RegistryServer) -> None:
    ref, key = push_encrypted(tmp_path, registry.host)
    store = tmp_path / "store"
    base = [*LAYERSEAL, "pull", "--src-tls-verify=false", "--decryption-key", str(key), "--store", str(store)]
    r = subprocess.run(
        [*base, "--snapshots", str(tmp_path / "s1"), ref, "--rootfs", str(tmp_path / "r1")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    blobs = sorted((store / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim = blobs[-1]  # the busybox layer
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = subprocess.run(
        [*base, "--snapshots", str(tmp_path / "s2"), ref, "--rootfs", str(tmp_path / "r2"), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r2" / "bin" / "busybox").read_bytes() == (
        tmp_path / "r1" / "bin" / "busybox"
    ).read_bytes()
    # the tampered copy was detected and replaced by a verified download
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == victim.name


def _malicious_image(ref: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        payload = b"escaped"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    dst = LayoutDestination(LayoutReference.parse(ref))
    try:
        layer = dst.put_blob([buf.getvalue()], "application/vnd.oci.image.layer.v1.tar")
        from layerseal.image.config import ImageConfig
        from layerseal.image.digest import Digest
        from layerseal.image.manifest import Manifest

        cfg = ImageConfig(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(buf.getvalue()))]},
            }
        )
        cdesc = dst.put_blob([cfg.to_bytes()], "application/vnd.oci.image.config.v1+json")
        dst.put_manifest(
            Manifest(config=cdesc, layers=(layer,)).to_bytes(), "application/vnd.oci.image.manifest.v1+json"
        )
    finally:
        dst.close()


def test_malicious_layer_in_encrypted_image_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _malicious_image(f"oci:{tmp_path}/evil:v1")
    key = make_keys(tmp_path / "k", "ec256")
    assert (
        main(
            [
                "copy",
                "-q",
                "--encryption-key",
                f"jwe:{key.public}",
                f"oci:{tmp_path}/evil:v1",
                f"oci:{tmp_path}/enc:v1",
            ]
        )
        == 0
    )
    work = tmp_path / "work"
    work.mkdir()
    status = main(
        [
            "pull",
            "--decryption-key",
            str(key.private),
            "--store",
            str(work / "store"),
            "--snapshots",
            str(work / "snaps"),
            f"oci:{tmp_path}/enc:v1",
            "--rootfs",
            str(work / "a" / "b" / "rootfs"),
        ]
    )
    err = capsys.readouterr().err
    assert status != 0 and "../../escaped.txt" in err
    assert (
        not (work / "a").exists()
        and not (tmp_path / "escaped.txt").exists()
        and not (work / "escaped.txt").exists()
    )
    snapshots = work / "snaps"
    assert not any((snapshots / "snap").iterdir()) and not any((snapshots / "work").iterdir())


def test_wrong_key_pull_names_layers_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "gzip"))
    right, wrong = make_keys(tmp_path / "a", "ec256"), make_keys(tmp_path / "b", "rsa")
    assert (
        main(
            [
                "copy",
                "-q",
                "--encryption-key",
                f"jwe:{right.public}",
                "--encrypt-layer",
                "1",
                f"oci:{tmp_path}/src:v1",
                f"oci:{tmp_path}/enc:v1",
            ]
        )
        == 0
    )
    status = main(
        [
            "pull",
            "--decryption-key",
            str(wrong.private),
            "--store",
            str(tmp_path / "store"),
            "--snapshots",
            str(tmp_path / "snaps"),
            f"oci:{tmp_path}/enc:v1",
            "--rootfs",
            str(tmp_path / "rootfs"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "no key for 1 of 1 encrypted layer(s)" in err and "layer 1 (sha256:" in err
    assert not (tmp_path / "rootfs").exists()
    assert not (tmp_path / "store" / "blobs" / "sha256").exists() or not any(
        (tmp_path / "store" / "blobs" / "sha256").iterdir()
    )
