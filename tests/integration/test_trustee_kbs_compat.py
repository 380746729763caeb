"""The engine against a Trustee-like KBS (tests/support/trustee_kbs.py, written from kbs-types).

The image is encrypted here the way CoCo's coco_keyprovider does it, independently of
layerseal's builder: AES-256-CTR + HMAC-SHA256 layers (ocicrypt), and per layer an
``AnnotationPacket`` under ``provider.attestation-agent`` whose KEK is a plain KBS
resource ``kbs:///default/image-kek/<n>`` (v1 packet with A256GCM, v2 packet with A256CTR).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from layerseal.attest.sample import SampleAttester
from layerseal.builder.endpoints import open_source
from layerseal.crypto.keys import generate_key
from layerseal.engine.keys import BrokerUnwrapper
from layerseal.engine.pull import pull_image
from layerseal.engine.snapshot import SnapshotStore
from layerseal.errors import IntegrityError, LayersealError
from layerseal.kbs.client import EnclaveClient
from layerseal.kbs.packets import new_key_id, unwrap_key_packet
from layerseal.layout.blobstore import SharedBlobStore
from support.oci_images import OCI_CONFIG, OCI_MANIFEST, descriptor, dumps, make_image, sha256
from support.trustee_kbs import KbsState, TrusteeLikeKbs

ENC = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
PROVIDER = "org.opencontainers.image.enc.keys.provider.attestation-agent"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def coco_packet(kid: str, kek: bytes, optsdata: bytes, wrap_type: str) -> bytes:
    if wrap_type == "A256GCM":
        iv = os.urandom(12)
        packet = {
            "kid": kid,
            "wrapped_data": b64(AESGCM(kek).encrypt(iv, optsdata, None)),
            "iv": b64(iv),
            "wrap_type": wrap_type,
        }
    else:  # AnnotationPacketV2 as coco_keyprovider writes it
        iv = os.urandom(16)
        packet = {
            "version": "0.1.0",
            "kid": kid,
            "wrapped_data": b64(ctr(kek, iv, optsdata)),
            "provider": "kbs",
            "iv": b64(iv),
            "wrap_type": wrap_type,
            "provider_settings": {},
            "annotations": {},
        }
    return json.dumps(packet).encode()


def encrypted_layout(directory: Path, keks: dict[str, bytes]) -> dict[str, bytes]:
    """Write an OCI layout whose two layers are CoCo-encrypted, their KEKs the two
    resources of *keks* (in order); returns the layer files."""
    paths = list(keks)
    files = [{"etc/one": b"first layer\n"}, {"etc/two": b"second layer\n"}]
    image = make_image(files)
    manifest = json.loads(image.manifest)
    blobs = dict(image.blobs)
    layers = []
    for n, (desc, wrap_type) in enumerate(zip(manifest["layers"], ["A256GCM", "A256CTR"], strict=True)):
        plain = blobs.pop(desc["digest"])
        symkey, nonce = os.urandom(32), os.urandom(16)
        cipher = ctr(symkey, nonce, plain)
        mac = hmac.new(symkey, cipher, hashlib.sha256).digest()
        optsdata = dumps(
            {"symkey": b64(symkey), "digest": desc["digest"], "cipheroptions": {"nonce": b64(nonce)}}
        )
        packet = coco_packet(f"kbs:///{paths[n]}", keks[paths[n]], optsdata, wrap_type)
        pubopts = dumps({"cipher": "AES_256_CTR_HMAC_SHA256", "hmac": b64(mac), "cipheroptions": {}})
        annotations = {"org.opencontainers.image.enc.pubopts": b64(pubopts), PROVIDER: b64(packet)}
        layers.append(descriptor(ENC, cipher, annotations=annotations))
        blobs[sha256(cipher)] = cipher
    config = blobs[manifest["config"]["digest"]]
    new_manifest = dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": layers,
        }
    )
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    (directory / "oci-layout").write_bytes(dumps({"imageLayoutVersion": "1.0.0"}))
    for digest, data in [*blobs.items(), (sha256(new_manifest), new_manifest)]:
        (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
    index = {
        "schemaVersion": 2,
        "manifests": [
            descriptor(OCI_MANIFEST, new_manifest, annotations={"org.opencontainers.image.ref.name": "coco"})
        ],
    }
    (directory / "index.json").write_bytes(dumps(index))
    return {"etc/one": b"first layer\n", "etc/two": b"second layer\n"}


COCO_PATHS = ["default/image-kek/layer0", "default/image-kek/layer1"]
# a layerseal-published image whose KEKs an operator moved into a Trustee KBS
LAYERSEAL_PATHS = [f"acme/layer-key/{new_key_id()}.1" for _ in range(2)]


@pytest.fixture
def kbs() -> Iterator[TrusteeLikeKbs]:
    state = KbsState(resources={p: os.urandom(32) for p in [*COCO_PATHS, *LAYERSEAL_PATHS]})
    with TrusteeLikeKbs(state) as server:
        yield server


def pull(
    kbs: TrusteeLikeKbs, tmp_path: Path, key_kind: str = "EC-P256", paths: list[str] = COCO_PATHS
) -> tuple[Path, EnclaveClient]:
    encrypted_layout(tmp_path / "layout", {p: kbs.state.resources[p] for p in paths})
    client = EnclaveClient(kbs.url, SampleAttester(), generate_key(key_kind))
    src = open_source(f"oci:{tmp_path / 'layout'}:coco")
    rootfs = tmp_path / "rootfs"
    try:
        pull_image(
            src,
            SharedBlobStore(tmp_path / "store"),
            SnapshotStore(tmp_path / "snapshots"),
            rootfs,
            broker=BrokerUnwrapper(client),
        )
    finally:
        src.close()
    return rootfs, client


@pytest.mark.parametrize("key_kind", ["EC-P256", "RSA-2048"])
def test_engine_pulls_a_coco_image_through_a_trustee_kbs(
    kbs: TrusteeLikeKbs, tmp_path: Path, key_kind: str
) -> None:
    rootfs, client = pull(kbs, tmp_path, key_kind)
    assert (rootfs / "etc/one").read_bytes() == b"first layer\n"
    assert (rootfs / "etc/two").read_bytes() == b"second layer\n"
    # kids outside layerseal's scheme go to the plain resource route only
    requests = kbs.state.requests
    assert not [r for r in requests if r[1] == "/kbs/v0/resources"]
    gets = sorted(p for m, p in requests if m == "GET")
    assert gets == [f"/kbs/v0/resource/{p}" for p in COCO_PATHS]
    client.close()


def test_layerseal_kids_fall_back_from_the_absent_batch_endpoint(kbs: TrusteeLikeKbs, tmp_path: Path) -> None:
    rootfs, client = pull(kbs, tmp_path, paths=LAYERSEAL_PATHS)
    assert (rootfs / "etc/two").read_bytes() == b"second layer\n"
    # one batch attempt (404 PluginNotFound), then one GET per key
    requests = kbs.state.requests
    assert [r for r in requests if r[1] == "/kbs/v0/resources"] == [("POST", "/kbs/v0/resources")]
    assert sorted(p for m, p in requests if m == "GET") == sorted(
        f"/kbs/v0/resource/{p}" for p in LAYERSEAL_PATHS
    )
    assert client.batch is False
    # later requests do not try the batch again
    client.get_keys([f"kbs:///{LAYERSEAL_PATHS[0]}"])
    assert sum(1 for r in kbs.state.requests if r[1] == "/kbs/v0/resources") == 1
    client.close()


def test_challenge_selected_hash_algorithm_is_honoured(kbs: TrusteeLikeKbs, tmp_path: Path) -> None:
    kbs.state.selected_hash = "sha512"
    rootfs, client = pull(kbs, tmp_path)
    assert (rootfs / "etc/two").exists()
    assert client.hash_algorithm == "sha512"
    client.close()


def test_expired_token_is_renewed_by_attesting_again(kbs: TrusteeLikeKbs) -> None:
    with EnclaveClient(kbs.url, SampleAttester(), generate_key("EC-P256")) as client:
        first = client.get_resource("kbs:///default/image-kek/layer0")
        kbs.state.tokens.clear()  # every token expired
        assert client.get_resource("kbs://kbs.example:8080/default/image-kek/layer0") == first
        assert sum(1 for _, p in kbs.state.requests if p == "/kbs/v0/attest") == 2


def test_unknown_resource_and_wrong_kek_are_named(kbs: TrusteeLikeKbs) -> None:
    client = EnclaveClient(kbs.url, SampleAttester(), generate_key("EC-P256"))
    with client, pytest.raises(LayersealError, match=r"HTTP 404: Plugin internal error"):
        client.get_keys(["kbs:///default/image-kek/missing"])

    packet = coco_packet("kbs:///default/image-kek/layer1", os.urandom(32), b'{"symkey":"x"}', "A256CTR")
    with pytest.raises(IntegrityError, match="A256CTR to open to JSON optsdata"):
        unwrap_key_packet(packet, os.urandom(32))
