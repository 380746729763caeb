"""ocicrypt interoperability with the real skopeo, in both directions."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers.images import blob_path, make_image, make_keys, manifest_of
from helpers.registry import skopeo_copy
from layerseal.cli.main import main

pytestmark = pytest.mark.integration


def layers(layout: Path, tag: str) -> list[dict[str, object]]:
    return manifest_of(layout, tag)[1]["layers"]  # type: ignore[return-value]


CASES = [
    # (key kinds, skopeo --encrypt-layer values, compressions)
    (("rsa",), (), ("gzip", "zstd")),
    (("ec256",), (), ("gzip",)),
    (("ec384", "rsa"), (), ("zstd", "gzip")),
    (("ec521",), ("-1",), ("gzip", "gzip", "zstd")),
    (("rsa", "ec256"), ("0",), ("zstd", "gzip")),
]


@pytest.mark.parametrize(("kinds", "only", "comps"), CASES)
def test_skopeo_encrypts_layerseal_decrypts(
    tmp_path: Path, kinds: tuple[str, ...], only: tuple[str, ...], comps: tuple[str, ...]
) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=comps)
    keys = [make_keys(tmp_path / "keys", k) for k in kinds]
    enc_args = [a for k in keys for a in ("--encryption-key", f"jwe:{k.public}")]
    enc_args += [a for n in only for a in ("--encrypt-layer", n)]
    skopeo_copy(*enc_args, f"oci:{tmp_path}/src:v1", f"oci:{tmp_path}/enc:v1")
    enc_layers = layers(tmp_path / "enc", "v1")
    want_encrypted = len(comps) if not only else len(only)
    assert sum(str(x["mediaType"]).endswith("+encrypted") for x in enc_layers) == want_encrypted

    for n, key in enumerate(keys):  # every recipient can decrypt on its own
        assert (
            main(
                [
                    "copy",
                    "-q",
                    "--decryption-key",
                    str(key.private),
                    f"oci:{tmp_path}/enc:v1",
                    f"oci:{tmp_path}/dec{n}:v1",
                ]
            )
            == 0
        )
        src_digest, src_manifest = manifest_of(tmp_path / "src", "v1")
        dec_digest, dec_manifest = manifest_of(tmp_path / f"dec{n}", "v1")
        assert dec_manifest == src_manifest
        assert dec_digest == src_digest  # byte-identical manifest
        for layer in src_manifest["layers"]:  # type: ignore[attr-defined]
            d = layer["digest"]
            assert (
                blob_path(tmp_path / f"dec{n}", d).read_bytes() == blob_path(tmp_path / "src", d).read_bytes()
            )


@pytest.mark.parametrize(("kinds", "only", "comps"), CASES)
def test_layerseal_encrypts_skopeo_decrypts(
    tmp_path: Path, kinds: tuple[str, ...], only: tuple[str, ...], comps: tuple[str, ...]
) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=comps)
    keys = [make_keys(tmp_path / "keys", k) for k in kinds]
    args = ["copy", "-q"] + [a for k in keys for a in ("--encryption-key", f"jwe:{k.public}")]
    args += [a for n in only for a in ("--encrypt-layer", n)]
    assert main([*args, f"oci:{tmp_path}/src:v1", f"oci:{tmp_path}/enc:v1"]) == 0
    enc_layers = layers(tmp_path / "enc", "v1")
    want = set(range(len(comps))) if not only else {int(n) % len(comps) for n in only}
    assert {i for i, x in enumerate(enc_layers) if str(x["mediaType"]).endswith("+encrypted")} == want
    src_layers = layers(tmp_path / "src", "v1")
    for i in want:  # ciphertext differs from plaintext, same size (CTR)
        assert enc_layers[i]["digest"] != src_layers[i]["digest"]
        assert enc_layers[i]["size"] == src_layers[i]["size"]

    for n, key in enumerate(keys):
        skopeo_copy(
            "--decryption-key", str(key.private), f"oci:{tmp_path}/enc:v1", f"oci:{tmp_path}/dec{n}:v1"
        )
        assert manifest_of(tmp_path / f"dec{n}", "v1") == manifest_of(tmp_path / "src", "v1")


def test_skopeo_refuses_wrong_key_for_layerseal_image(tmp_path: Path) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",))
    right, wrong = make_keys(tmp_path / "a", "rsa"), make_keys(tmp_path / "b", "ec256")
    assert (
        main(
            [
                "copy",
                "-q",
                "--encryption-key",
                f"jwe:{right.public}",
                f"oci:{tmp_path}/src:v1",
                f"oci:{tmp_path}/enc:v1",
            ]
        )
        == 0
    )
    with pytest.raises(subprocess.CalledProcessError):
        skopeo_copy(
            "--decryption-key", str(wrong.private), f"oci:{tmp_path}/enc:v1", f"oci:{tmp_path}/dec:v1"
        )
