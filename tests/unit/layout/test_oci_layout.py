"""OCI layout: atomic commits, tag handling, verification, nothing left on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.images import make_image, manifest_of, tree_snapshot
from layerseal.errors import BadInputError, IntegrityError, NotFoundError
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest
from layerseal.layout.oci import LayoutDestination, LayoutReference, LayoutSource, OciLayout


def test_reference_parsing() -> None:
    assert LayoutReference.parse("oci:/tmp/a:v1") == LayoutReference(Path("/tmp/a"), "v1")
    assert LayoutReference.parse("oci:rel").tag is None
    for bad in ("oci:", "oci:/x:", "oci:/x:a b"):
        with pytest.raises(BadInputError, match="expected"):
            LayoutReference.parse(bad)


def test_tags_are_kept_when_another_is_written(tmp_path: Path) -> None:
    make_image(f"oci:{tmp_path}/img:one", compressions=("gzip",), big=10)
    make_image(f"oci:{tmp_path}/img:two", compressions=("zstd",), big=10)
    index = json.loads((tmp_path / "img" / "index.json").read_text())
    tags = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert sorted(tags) == ["one", "two"]
    make_image(f"oci:{tmp_path}/img:one", compressions=("gzip", "gzip"), big=10)
    index = json.loads((tmp_path / "img" / "index.json").read_text())
    assert len(index["manifests"]) == 2  # retagged, not duplicated
    _, m = manifest_of(tmp_path / "img", "one")
    assert len(m["layers"]) == 2  # type: ignore[arg-type]


def test_failed_blob_stream_leaves_layout_unchanged(tmp_path: Path) -> None:
    make_image(f"oci:{tmp_path}/img:one", compressions=("gzip",), big=10)
    before = tree_snapshot(tmp_path / "img")
    dst = LayoutDestination(LayoutReference.parse(f"oci:{tmp_path}/img:two"))

    def failing() -> object:
        yield b"part"
        raise IntegrityError("boom")

    with pytest.raises(IntegrityError):
        dst.put_blob(failing(), "application/octet-stream")  # type: ignore[arg-type]
    dst.put_blob([b"committed only with a manifest"], "application/octet-stream")
    dst.close()
    assert tree_snapshot(tmp_path / "img") == before


def test_expected_digest_mismatch_is_refused(tmp_path: Path) -> None:
    dst = LayoutDestination(LayoutReference.parse(f"oci:{tmp_path}/new:t"))
    wrong = Descriptor("application/octet-stream", Digest.of(b"other"), 4)
    with pytest.raises(IntegrityError, match="expected sha256:"):
        dst.put_blob([b"data"], "application/octet-stream", wrong)
    dst.close()
    assert not (tmp_path / "new").exists()  # directory we created is gone again


def test_source_verifies_blob_digest(tmp_path: Path) -> None:
    make_image(f"oci:{tmp_path}/img:t", compressions=("gzip",), big=10)
    src = LayoutSource(LayoutReference.parse(f"oci:{tmp_path}/img:t"))
    _, m = manifest_of(tmp_path / "img", "t")
    layer = Descriptor.from_json(m["layers"][0])  # type: ignore[index]
    path = OciLayout(tmp_path / "img").blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="expected digest"):
        b"".join(src.iter_blob(layer))


def test_missing_tag_and_layout(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="oci-layout"):
        LayoutSource(LayoutReference.parse(f"oci:{tmp_path}/none:t"))
    make_image(f"oci:{tmp_path}/img:t", compressions=("gzip",), big=10)
    with pytest.raises(NotFoundError, match="expected tag 'nope', seen tags \\['t'\\]"):
        LayoutSource(LayoutReference.parse(f"oci:{tmp_path}/img:nope")).get_manifest()
