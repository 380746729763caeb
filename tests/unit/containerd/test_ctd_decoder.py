"""The processor's core: plaintext leaves only after the HMAC of the whole layer verified."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from helpers.enclayer import EncLayer, encrypted_layer, tampered
from layerseal.containerd.contentstore import blobs_dir, find_layer_descriptors
from layerseal.containerd.decoder import decode
from layerseal.crypto.keys import generate_key, private_key_to_pem
from layerseal.crypto.keywrap import JweUnwrapper
from layerseal.errors import BadInputError, IntegrityError, WrongKeyError
from layerseal.image import mediatypes as mt
from layerseal.image.descriptor import Descriptor
from layerseal.image.digest import Digest

ENC_GZIP = mt.encrypted_type(mt.OCI_LAYER_GZIP)
KEY = generate_key("EC-P256")


@pytest.fixture(scope="module")
def layer() -> EncLayer:
    return encrypted_layer([KEY.public_key()])


def run(
    tmp_path: Path,
    blob: bytes,
    *,
    descriptor: Descriptor | None,
    candidates: list[Descriptor] | None = None,
    keys: list = [KEY],  # type: ignore[type-arg]  # noqa: B006
    media_type: str = ENC_GZIP,
) -> tuple[io.BytesIO, object]:
    out = io.BytesIO()
    find = (lambda d, m: list(candidates)) if candidates is not None else None
    result = decode(
        io.BytesIO(blob),
        out,
        media_type,
        descriptor=descriptor,
        find_descriptors=find,
        unwrappers=(JweUnwrapper(keys),),
        spool_dir=tmp_path / "spool",
    )
    return out, result


def test_payload_descriptor_decrypts(tmp_path: Path, layer: EncLayer) -> None:
    out, result = run(tmp_path, layer.blob, descriptor=layer.descriptor)
    assert out.getvalue() == layer.plain
    assert result.descriptor_source == "payload"  # type: ignore[attr-defined]
    assert list((tmp_path / "spool").iterdir()) == []  # the spool was anonymous


def test_content_store_candidates_decrypt(tmp_path: Path, layer: EncLayer) -> None:
    other = encrypted_layer([generate_key("EC-P256").public_key()], size=10)
    # a manifest wrapping the same blob for someone else comes first: skipped, not fatal
    foreign = layer.descriptor.with_changes(annotations=other.descriptor.annotations)
    out, result = run(tmp_path, layer.blob, descriptor=None, candidates=[foreign, layer.descriptor])
    assert out.getvalue() == layer.plain
    assert result.descriptor_source == "content store"  # type: ignore[attr-defined]


def test_tampered_ciphertext_writes_nothing(tmp_path: Path, layer: EncLayer) -> None:
    blob, desc = tampered(layer)
    for kwargs in ({"descriptor": desc}, {"descriptor": None, "candidates": [desc]}):
        out = io.BytesIO()
        with pytest.raises(IntegrityError, match=r"HMAC mismatch.*nothing was written"):
            decode(
                io.BytesIO(blob),
                out,
                ENC_GZIP,
                descriptor=kwargs["descriptor"],  # type: ignore[arg-type]
                find_descriptors=(lambda d, m: [desc]) if kwargs["descriptor"] is None else None,
                unwrappers=(JweUnwrapper([KEY]),),
                spool_dir=tmp_path,
            )
        assert out.getvalue() == b""


def test_blob_other_than_payload_descriptor_writes_nothing(tmp_path: Path, layer: EncLayer) -> None:
    other = encrypted_layer([KEY.public_key()], size=1000)
    out = io.BytesIO()
    with pytest.raises(IntegrityError, match="as the payload descriptor says"):
        decode(
            io.BytesIO(other.blob + b"x" * (layer.descriptor.size - len(other.blob))),
            out,
            ENC_GZIP,
            descriptor=layer.descriptor,
            unwrappers=(JweUnwrapper([KEY]),),
            spool_dir=tmp_path,
        )
    assert out.getvalue() == b""
    with pytest.raises(IntegrityError, match=r"expected .* bytes, seen more"):
        run(tmp_path, layer.blob + b"extra", descriptor=layer.descriptor)


def test_wrong_key_and_bad_media_type(tmp_path: Path, layer: EncLayer) -> None:
    with pytest.raises(WrongKeyError, match="wrapped for: jwe"):
        run(tmp_path, layer.blob, descriptor=layer.descriptor, keys=[generate_key("EC-P256")])
    with pytest.raises(BadInputError, match="STREAM_PROCESSOR_MEDIATYPE: expected one of"):
        run(tmp_path, layer.blob, descriptor=layer.descriptor, media_type=mt.OCI_LAYER_GZIP)
    with pytest.raises(BadInputError, match="media type expected"):
        run(
            tmp_path, layer.blob, descriptor=layer.descriptor, media_type=mt.encrypted_type(mt.OCI_LAYER_ZSTD)
        )
    with pytest.raises(BadInputError, match="expected a manifest in containerd's content store"):
        run(tmp_path, layer.blob, descriptor=None, candidates=[])


def _store_blob(root: Path, data: bytes) -> str:
    d = Digest.of(data)
    path = blobs_dir(root) / d.hex
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(d)


def test_content_store_lookup(tmp_path: Path, layer: EncLayer) -> None:
    root = tmp_path / "containerd"
    desc = layer.descriptor.to_json()
    plain_layer = {"mediaType": mt.OCI_LAYER_GZIP, "digest": "sha256:" + "11" * 32, "size": 5}
    _store_blob(root, json.dumps({"schemaVersion": 2, "layers": [plain_layer, desc]}).encode())
    # the same layer in another manifest with identical annotations: reported once
    _store_blob(
        root, json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": [desc]}).encode()
    )
    _store_blob(root, json.dumps({"manifests": [desc]}).encode())  # an index: not a manifest
    _store_blob(root, layer.blob)  # binary blobs are skipped
    found = find_layer_descriptors(root, layer.descriptor.digest, ENC_GZIP)
    assert found == [layer.descriptor]
    assert find_layer_descriptors(root, layer.descriptor.digest, mt.encrypted_type(mt.OCI_LAYER_ZSTD)) == []
    assert find_layer_descriptors(root, Digest.of(b"nothing"), ENC_GZIP) == []
    with pytest.raises(BadInputError, match=r"containerd content store .*: expected a readable directory"):
        find_layer_descriptors(tmp_path / "missing", layer.descriptor.digest, ENC_GZIP)


def test_packet_only_layer_without_broker_names_the_missing_setting(tmp_path: Path, layer: EncLayer) -> None:
    from layerseal.containerd.keysource import unwrappers
    from layerseal.image.encryption import keys_annotation

    name, value = keys_annotation("provider.attestation-agent", [b'{"kid":"kbs:///acme/layer-key/k1"}'])
    notes = {k: v for k, v in layer.descriptor.annotations.items() if ".enc.keys." not in k}
    desc = layer.descriptor.with_changes(annotations={**notes, name: value})
    out = io.BytesIO()
    with pytest.raises(
        BadInputError, match=r"broker key packet \(provider.attestation-agent\): expected the broker URL"
    ):
        decode(
            io.BytesIO(layer.blob),
            out,
            ENC_GZIP,
            descriptor=desc,
            unwrappers=unwrappers([KEY], None, {}),
            spool_dir=tmp_path,
        )
    assert out.getvalue() == b""


def test_keys_directory_names_a_bad_file(tmp_path: Path) -> None:
    from layerseal.containerd.keysource import directory_keys

    (tmp_path / "good.key").write_bytes(private_key_to_pem(KEY))
    (tmp_path / "good.pub").write_bytes(b"skipped")
    (tmp_path / ".hidden").write_bytes(b"skipped")
    assert len(directory_keys(tmp_path)) == 1
    (tmp_path / "broken.key").write_bytes(b"not a key")
    with pytest.raises(BadInputError, match=r"broken\.key"):
        directory_keys(tmp_path)
    with pytest.raises(BadInputError, match=r"--decryption-keys-path .*: expected a readable directory"):
        directory_keys(tmp_path / "missing")
