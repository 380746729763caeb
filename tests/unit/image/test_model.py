"""Image model: parsing, validation that names the field, lossless round trips."""

from __future__ import annotations

import json

import pytest

from layerseal.errors import BadInputError
from layerseal.image import mediatypes as mt
from layerseal.image.config import ImageConfig
from layerseal.image.descriptor import Descriptor, Platform
from layerseal.image.digest import Digest, DigestVerifier
from layerseal.image.manifest import Index, Manifest, detect_media_type, parse_any

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def manifest_obj(**extra: object) -> dict[str, object]:
    obj: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 7},
        "layers": [
            {"mediaType": mt.OCI_LAYER_GZIP, "digest": D2, "size": 9, "annotations": {"b": "2", "a": "1"}}
        ],
    }
    obj.update(extra)
    return obj


def test_digest_parse_and_errors() -> None:
    d = Digest.parse(D1)
    assert (d.algorithm, d.hex, str(d)) == ("sha256", "a" * 64, D1)
    with pytest.raises(BadInputError, match="expected 'algorithm:hex'"):
        Digest.parse("nocolon")
    with pytest.raises(BadInputError, match="64 lowercase hex"):
        Digest.parse("sha256:abc")
    with pytest.raises(BadInputError, match="algorithm"):
        Digest.parse("md5:" + "a" * 32)


def test_digest_verifier_detects_size_and_content() -> None:
    good = Digest.of(b"hello")
    v = DigestVerifier(good, 5)
    v.update(b"hel")
    v.update(b"lo")
    v.verify()
    bad = DigestVerifier(good, 5)
    bad.update(b"hellO")
    with pytest.raises(Exception, match="expected digest"):
        bad.verify()
    long = DigestVerifier(good, 5)
    with pytest.raises(Exception, match="expected 5 bytes, seen more"):
        long.update(b"hello!")


def test_manifest_round_trip_keeps_unknown_fields_and_go_order() -> None:
    obj = manifest_obj(futureField={"x": [1, 2]})
    obj["layers"][0]["futureDescField"] = True  # type: ignore[index]
    m = Manifest.from_bytes(json.dumps(obj).encode())
    again = json.loads(m.to_bytes())
    assert again == obj
    # Go's encoder: schemaVersion first, annotations sorted, compact
    text = m.to_bytes().decode()
    assert text.startswith('{"schemaVersion":2,"mediaType":')
    assert '"annotations":{"a":"1","b":"2"}' in text
    assert " " not in text


def test_go_escaping_matches_encoding_json() -> None:
    m = Manifest.from_bytes(json.dumps(manifest_obj(annotations={"k": "<a&b>"})).encode())
    assert b'"<a&b>"' not in m.to_bytes()
    assert b"\\u003ca\\u0026b\\u003e" in m.to_bytes()


def test_docker_descriptor_order() -> None:
    obj = manifest_obj(mediaType=mt.DOCKER_MANIFEST)
    m = Manifest.from_bytes(json.dumps(obj).encode())
    assert m.is_docker
    assert m.to_bytes().decode().count('"size":9,"digest"') == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.pop("config"), "field 'config' is missing"),
        (lambda o: o.update(schemaVersion=1), "expected 2, seen 1"),
        (lambda o: o.update(layers="x"), "field 'layers': expected an array"),
        (lambda o: o["layers"][0].update(size="9"), r"layers\[0\]: field 'size': expected an integer"),
        (lambda o: o["layers"][0].update(digest="sha256:zz"), r"layers\[0\]: field 'digest'"),
        (lambda o: o["config"].pop("mediaType"), "config: field 'mediaType' is missing"),
        (lambda o: o.update(mediaType="text/plain"), "field 'mediaType': expected one of"),
        (lambda o: o["layers"][0].update(size=-1), "expected size >= 0"),
    ],
)
def test_manifest_validation_names_the_field(mutate: object, message: str) -> None:
    obj = manifest_obj()
    mutate(obj)  # type: ignore[operator]
    with pytest.raises(BadInputError, match=message):
        Manifest.from_bytes(json.dumps(obj).encode())


@pytest.mark.parametrize("data", [b"", b"not json", b"[1,2]", b'{"schemaVersion": NaN}', b"\xff\xfe"])
def test_manifest_garbage_is_bad_input(data: bytes) -> None:
    with pytest.raises(BadInputError, match="manifest"):
        Manifest.from_bytes(data)


def test_manifest_size_limit() -> None:
    with pytest.raises(BadInputError, match="expected at most"):
        Manifest.from_bytes(b" " * (4 * 1024 * 1024 + 1))


def test_index_select_platform_and_detection() -> None:
    obj = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": D1,
                "size": 1,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": D2,
                "size": 2,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
        ],
    }
    data = json.dumps(obj).encode()
    assert detect_media_type(data) == mt.OCI_INDEX
    idx = parse_any(data)
    assert isinstance(idx, Index)
    assert str(idx.select(Platform.parse("linux/arm64")).digest) == D2
    assert str(idx.select(Platform.parse("linux/arm64/v8")).digest) == D2
    with pytest.raises(BadInputError, match="linux/s390x"):
        idx.select(Platform.parse("linux/s390x"))
    assert json.loads(idx.to_bytes()) == obj


def test_media_type_conversions() -> None:
    assert mt.encrypted_type(mt.DOCKER_LAYER_GZIP) == mt.OCI_LAYER_GZIP + "+encrypted"
    assert mt.decrypted_type(mt.OCI_LAYER_ZSTD + "+encrypted") == mt.OCI_LAYER_ZSTD
    assert mt.compression(mt.OCI_LAYER_ZSTD + "+encrypted") == "zstd"
    assert all(mt.is_encrypted(t) for t in mt.ENCRYPTED_LAYERS)
    with pytest.raises(BadInputError):
        mt.encrypted_type(mt.OCI_LAYER_GZIP + "+encrypted")
    with pytest.raises(BadInputError):
        mt.decrypted_type(mt.OCI_LAYER_GZIP)


def test_config_with_layer_appends_and_keeps_fields() -> None:
    raw = {
        "architecture": "amd64",
        "os": "linux",
        "x-extra": 1,
        "rootfs": {"type": "layers", "diff_ids": [D1]},
    }
    cfg = ImageConfig.from_bytes(json.dumps(raw).encode())
    new = cfg.with_layer(Digest.parse(D2), {"created_by": "test"})
    assert [str(d) for d in new.diff_ids] == [D1, D2]
    assert new.history[-1]["created_by"] == "test"
    assert json.loads(new.to_bytes())["x-extra"] == 1
    assert [str(d) for d in cfg.diff_ids] == [D1]  # original untouched
    with pytest.raises(BadInputError, match=r"diff_ids\[0\]"):
        ImageConfig.from_bytes(b'{"rootfs":{"diff_ids":["bogus"]}}')


def test_descriptor_requires_fields() -> None:
    with pytest.raises(BadInputError, match="'size' is missing"):
        Descriptor.from_json({"mediaType": "x", "digest": D1})
