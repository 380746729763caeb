"""``make demo``: the main job on embedded defaults, printed step by step.

Builds a small image from generated files, encrypts every layer with its own key for
a generated enclave key pair, checks that the encrypted layers reveal nothing,
decrypts it again and shows the round trip is exact.  Everything happens in a
temporary directory unless ``LAYERSEAL_DEMO_DIR`` names one to keep.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from layerseal.builder.copy import CopyOptions, copy_image
from layerseal.builder.inspect import inspect_image
from layerseal.builder.scratch import LayerSpec, build_image
from layerseal.builder.tarlayer import FileEntry
from layerseal.crypto.keys import generate_key
from layerseal.crypto.keywrap import JweUnwrapper, JweWrapper
from layerseal.layout.oci import LayoutDestination, LayoutReference, LayoutSource

SECRET = b"the recipe for the secret sauce\n"


def _say(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


def run(workdir: Path) -> None:
    plain, sealed, opened = (f"oci:{workdir}/{n}:demo" for n in ("plain", "sealed", "opened"))
    dst = LayoutDestination(LayoutReference.parse(plain))
    try:
        build_image(
            dst,
            [
                LayerSpec((FileEntry("etc/motd", b"welcome to layerseal\n"),), "gzip", "base files"),
                LayerSpec((FileEntry("app/secret.txt", SECRET, 0o600),), "zstd", "application secret"),
                LayerSpec(
                    (FileEntry("app/run.sh", b"#!/bin/sh\necho hello from the enclave\n", 0o755),), "gzip"
                ),
            ],
            cmd=("/app/run.sh",),
        )
    finally:
        dst.close()
    _say("build", f"made a 3-layer image at {plain}")

    enclave_key = generate_key("EC-P256")
    src = LayoutSource(LayoutReference.parse(plain))
    out = LayoutDestination(LayoutReference.parse(sealed))
    try:
        report = copy_image(src, out, CopyOptions(wrappers=(JweWrapper([enclave_key.public_key()]),)))
    finally:
        out.close()
    for layer in report.layers:
        _say(
            "encrypt",
            f"layer {layer.index}: {layer.source.digest.hex[:12]} -> {layer.result.digest.hex[:12]} "
            f"({layer.result.media_type.rsplit('.', 1)[-1]}, own key)",
        )

    summary = inspect_image(LayoutSource(LayoutReference.parse(sealed)))
    blobs = Path(workdir, "sealed", "blobs", "sha256")
    leaked = any(SECRET in p.read_bytes() for p in blobs.iterdir())
    _say(
        "inspect",
        f"{sum(x.encrypted for x in summary.layers)}/{len(summary.layers)} layers encrypted; "
        f"secret visible in any blob: {leaked}",
    )

    back = LayoutDestination(LayoutReference.parse(opened))
    try:
        copy_image(
            LayoutSource(LayoutReference.parse(sealed)),
            back,
            CopyOptions(unwrappers=(JweUnwrapper([enclave_key]),)),
        )
    finally:
        back.close()
    same = (
        inspect_image(LayoutSource(LayoutReference.parse(opened))).manifest_digest
        == inspect_image(LayoutSource(LayoutReference.parse(plain))).manifest_digest
    )
    _say("decrypt", f"decrypted with the enclave key; manifest identical to the original: {same}")
    if leaked or not same:
        raise SystemExit("demo failed: see above")
    _say("done", f"images are in {workdir}")


def main() -> int:
    keep = os.environ.get("LAYERSEAL_DEMO_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        run(Path(keep))
    else:
        with tempfile.TemporaryDirectory(prefix="layerseal-demo-") as d:
            run(Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
