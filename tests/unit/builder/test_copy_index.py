"""``copy_index`` (``copy --all``) between OCI layouts: bytes in, layouts out, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.images import make_keys
from layerseal.builder.copy import CopyOptions, IndexCopyReport, copy_index
from layerseal.crypto.keys import load_private_key, load_public_key
from layerseal.crypto.keywrap import JweUnwrapper, JweWrapper
from layerseal.errors import BadInputError
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Platform
from layerseal.layout.oci import LayoutDestination, LayoutReference, LayoutSource
from support.oci_images import descriptor, dumps, make_layer, sha256

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"


def _docker_list_layout(root: Path) -> dict[str, str]:
    """A layout tagged v1 with a Docker manifest list over two Docker schema 2 images."""
    blobs: dict[str, bytes] = {}
    entries, digests = [], {}
    for arch in ("amd64", "arm64"):
        layer, tar = make_layer({f"{arch}.txt": arch.encode() * 1000})
        config = dumps(
            {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]}}
        )
        manifest = dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.DOCKER_MANIFEST,
                "config": descriptor(DOCKER_CONFIG, config),
                "layers": [descriptor(DOCKER_LAYER, layer)],
            }
        )
        blobs.update({sha256(layer): layer, sha256(config): config, sha256(manifest): manifest})
        entries.append(
            descriptor(mt.DOCKER_MANIFEST, manifest, platform={"architecture": arch, "os": "linux"})
        )
        digests[arch] = sha256(manifest)
    index = dumps({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST_LIST, "manifests": entries})
    blobs[sha256(index)] = index
    (root / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in blobs.items():
        (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    (root / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    top = descriptor(mt.DOCKER_MANIFEST_LIST, index, annotations={"org.opencontainers.image.ref.name": "v1"})
    (root / "index.json").write_bytes(dumps({"schemaVersion": 2, "manifests": [top]}))
    return digests


def _read(layout: Path, digest: str) -> dict[str, object]:
    return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes())  # type: ignore[no-any-return]


def test_docker_list_encrypted_becomes_an_oci_index_of_encrypted_images(tmp_path: Path) -> None:
    source_manifests = _docker_list_layout(tmp_path / "src")
    key = make_keys(tmp_path / "k", "ec256")
    options = CopyOptions(wrappers=(JweWrapper([load_public_key(key.public.read_bytes())]),))
    report = copy_index(
        LayoutSource(LayoutReference.parse(f"oci:{tmp_path}/src:v1")),
        LayoutDestination(LayoutReference.parse(f"oci:{tmp_path}/enc:v1")),
        options,
    )
    assert isinstance(report, IndexCopyReport)
    index = _read(tmp_path / "enc", str(report.index.digest))
    assert index["mediaType"] == mt.OCI_INDEX  # a Docker list cannot hold OCI manifests
    entries = index["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == ["amd64", "arm64"]  # type: ignore[index]
    for entry in entries:  # type: ignore[attr-defined]
        assert entry["mediaType"] == mt.OCI_MANIFEST
        child = _read(tmp_path / "enc", entry["digest"])
        assert child["config"]["mediaType"] == mt.OCI_CONFIG  # type: ignore[index]
        assert [x["mediaType"] for x in child["layers"]] == [mt.OCI_LAYER_GZIP + "+encrypted"]  # type: ignore[index]

    # decrypted again (a platform at a time would do too): every image's plaintext is back
    back = copy_index(
        LayoutSource(LayoutReference.parse(f"oci:{tmp_path}/enc:v1")),
        LayoutDestination(LayoutReference.parse(f"oci:{tmp_path}/back:v1")),
        CopyOptions(unwrappers=(JweUnwrapper([load_private_key(key.private.read_bytes())]),)),
    )
    assert isinstance(back, IndexCopyReport)
    for image in back.images:
        assert image is not None and [r.action for r in image.layers] == ["decrypted"]
    src_layers = {
        arch: _read(tmp_path / "src", digest)["layers"][0]["digest"]  # type: ignore[index]
        for arch, digest in source_manifests.items()
    }
    back_index = _read(tmp_path / "back", str(back.index.digest))
    got = {
        e["platform"]["architecture"]: _read(tmp_path / "back", e["digest"])["layers"][0]["digest"]  # type: ignore[index]
        for e in back_index["manifests"]  # type: ignore[attr-defined]
    }
    assert got == src_layers


def test_a_single_image_source_is_copied_as_copy_image_would(tmp_path: Path) -> None:
    from helpers.images import make_image

    make_image(f"oci:{tmp_path}/one:v1", compressions=("gzip",))
    report = copy_index(
        LayoutSource(LayoutReference.parse(f"oci:{tmp_path}/one:v1")),
        LayoutDestination(LayoutReference.parse(f"oci:{tmp_path}/out:v1")),
    )
    assert not isinstance(report, IndexCopyReport) and [r.action for r in report.layers] == ["copied"]


def test_platform_with_all_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    _docker_list_layout(tmp_path / "x")
    with pytest.raises(BadInputError, match="--all: expected no --platform"):
        copy_index(
            LayoutSource(LayoutReference.parse(f"oci:{tmp_path}/x:v1")),
            LayoutDestination(LayoutReference.parse(f"oci:{tmp_path}/y:v1")),
            CopyOptions(platform=Platform("arm64", "linux")),
        )
    assert not (tmp_path / "y").exists()
