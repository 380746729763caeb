"""Build small OCI images and key pairs for tests, and snapshot directory trees."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from layerseal.builder.scratch import LayerSpec, build_image
from layerseal.builder.tarlayer import FileEntry
from layerseal.layout.oci import LayoutDestination, LayoutReference


def make_image(
    ref: str, *, compressions: tuple[str, ...] = ("gzip", "zstd", "gzip"), big: int = 300_000
) -> None:
    """An image with one layer per entry of *compressions*; layer i holds /layer<i>.txt."""
    dst = LayoutDestination(LayoutReference.parse(ref))
    try:
        specs = [
            LayerSpec(
                (
                    FileEntry(f"layer{i}.txt", f"hello from layer {i}\n".encode()),
                    FileEntry(f"data/blob{i}.bin", os.urandom(big)),
                ),
                comp,
                created_by=f"test layer {i}",
            )
            for i, comp in enumerate(compressions)
        ]
        build_image(dst, specs, cmd=("/bin/echo", "hello"))
    finally:
        dst.close()


@dataclass(frozen=True)
class KeyPair:
    private: Path  # PKCS#8 PEM (what skopeo accepts)
    public: Path


def make_keys(directory: Path, kind: str) -> KeyPair:
    """RSA or EC (P-256/P-384/P-521) key pair written with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / f"{kind}.key", directory / f"{kind}.pub"
    if kind.startswith("rsa"):
        bits = kind.removeprefix("rsa") or "2048"
        cmd = [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            f"rsa_keygen_bits:{bits}",
            "-out",
            str(priv),
        ]
    else:
        curve = {"ec256": "P-256", "ec384": "P-384", "ec521": "P-521"}[kind]
        cmd = [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            f"ec_paramgen_curve:{curve}",
            "-out",
            str(priv),
        ]
    subprocess.run(cmd, check=True, capture_output=True)
    subprocess.run(
        ["openssl", "pkey", "-in", str(priv), "-pubout", "-out", str(pub)], check=True, capture_output=True
    )
    return KeyPair(priv, pub)


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every path under *root* with a hash of its content (or its kind), to compare states."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def manifest_of(layout: Path, tag: str) -> tuple[str, dict[str, object]]:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            digest = m["digest"]
            return digest, json.loads((layout / "blobs" / "sha256" / digest[7:]).read_bytes())
    raise AssertionError(f"tag {tag} not in {layout}")


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def make_busybox_image(ref: str, message: str = "hello from the enclave", extra_layers: int = 1) -> None:
    """A runnable image: static busybox in layer 0, a script printing *message* in the last layer."""
    from helpers.rootfs import static_busybox

    busybox = static_busybox()
    if busybox is None:
        raise RuntimeError("a static busybox is needed: apt-get install busybox-static")
    base = (
        FileEntry("bin", kind="dir", mode=0o755),
        FileEntry("bin/busybox", busybox.read_bytes(), 0o755),
        FileEntry("bin/sh", kind="symlink", target="busybox", mode=0o777),
        FileEntry("bin/echo", kind="symlink", target="busybox", mode=0o777),
        FileEntry("bin/cat", kind="symlink", target="busybox", mode=0o777),
        *(FileEntry(d, kind="dir", mode=0o755) for d in ("proc", "dev", "sys", "tmp", "etc")),
    )
    layers = [LayerSpec(base, "gzip", "busybox")]
    for i in range(extra_layers - 1):
        layers.append(
            LayerSpec((FileEntry(f"data/file{i}.txt", f"layer {i + 1}\n".encode()),), "zstd", f"data {i}")
        )
    script = f"#!/bin/sh\necho {message}\n".encode()
    layers.append(LayerSpec((FileEntry("app/hello.sh", script, 0o755),), "gzip", "app"))
    dst = LayoutDestination(LayoutReference.parse(ref))
    try:
        build_image(dst, layers, cmd=("/app/hello.sh",))
    finally:
        dst.close()
