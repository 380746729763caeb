"""The keyprovider's keyunwrap against a Trustee-like KBS (tests/support/trustee_kbs.py).

The KBS is written from kbs-types, not from layerseal: no batch endpoint (404
``PluginNotFound``), resources by ``GET /kbs/v0/resource/<repo>/<type>/<tag>``, EAR-shaped
tokens without ``exp``, the ``sample`` TEE.  Packets are made as CoCo's coco_keyprovider
makes them (A256GCM v1, A256CTR v2), and as layerseal's broker names its keys.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator

import pytest

from integration.test_trustee_kbs_compat import coco_packet
from layerseal.attest.sample import SampleAttester
from layerseal.errors import LayersealError
from layerseal.kbs.packets import new_key_id
from layerseal.keyprovider import protocol
from layerseal.keyprovider.params import Settings
from layerseal.keyprovider.provider import Provider
from support.trustee_kbs import KbsState, TrusteeLikeKbs

pytestmark = pytest.mark.integration

COCO = ["default/image-kek/layer0", "default/image-kek/layer1"]
OURS = [f"acme/layer-key/{new_key_id()}.1" for _ in range(2)]
OPTSDATA = [
    json.dumps({"symkey": base64.b64encode(os.urandom(32)).decode(), "n": n}).encode() for n in range(2)
]


@pytest.fixture
def kbs() -> Iterator[TrusteeLikeKbs]:
    with TrusteeLikeKbs(KbsState(resources={p: os.urandom(32) for p in [*COCO, *OURS]})) as server:
        yield server


@pytest.fixture
def provider(kbs: TrusteeLikeKbs) -> Iterator[Provider]:
    p = Provider("attestation-agent", Settings(), env={}, attester_factory=lambda _: SampleAttester())
    yield p
    p.close()


def request_for(kbs: TrusteeLikeKbs, packet: bytes) -> bytes:
    """A keyunwrap request as Go ocicrypt sends it: parameters and annotation in base64."""
    kbs_param = base64.b64encode(f"kbs={kbs.url}".encode()).decode()
    request = {
        "op": "keyunwrap",
        "keyunwrapparams": {
            "dc": {"Parameters": {"attestation-agent": [kbs_param]}},
            "annotation": base64.b64encode(packet).decode(),
        },
    }
    return json.dumps(request).encode()


def unwrap(provider: Provider, kbs: TrusteeLikeKbs, path: str, n: int, wrap_type: str = "A256GCM") -> bytes:
    packet = coco_packet(f"kbs:///{path}", kbs.state.resources[path], OPTSDATA[n], wrap_type)
    return protocol.parse_reply(provider.handle(request_for(kbs, packet)), "keyunwrap")


def posts(kbs: TrusteeLikeKbs, path: str) -> int:
    return sum(1 for m, p in kbs.state.requests if (m, p) == ("POST", path))


def test_coco_packets_unwrap_through_plain_resource_gets(provider: Provider, kbs: TrusteeLikeKbs) -> None:
    assert unwrap(provider, kbs, COCO[0], 0, "A256GCM") == OPTSDATA[0]
    assert unwrap(provider, kbs, COCO[1], 1, "A256CTR") == OPTSDATA[1]
    # kids outside layerseal's scheme never try the batch endpoint
    assert posts(kbs, "/kbs/v0/resources") == 0
    gets = [p for m, p in kbs.state.requests if m == "GET"]
    assert gets == [f"/kbs/v0/resource/{p}" for p in COCO]
    # the token has no exp (opaque to clients): it is reused, one attestation for both
    assert provider.attestations == 1 and posts(kbs, "/kbs/v0/attest") == 1


def test_layerseal_kids_fall_back_once_from_the_absent_batch_endpoint(
    provider: Provider, kbs: TrusteeLikeKbs
) -> None:
    assert unwrap(provider, kbs, OURS[0], 0) == OPTSDATA[0]
    assert unwrap(provider, kbs, OURS[1], 1) == OPTSDATA[1]
    assert posts(kbs, "/kbs/v0/resources") == 1  # one 404 PluginNotFound, remembered
    assert sorted(p for m, p in kbs.state.requests if m == "GET") == sorted(
        f"/kbs/v0/resource/{p}" for p in OURS
    )


def test_selected_hash_algorithm_and_expired_tokens(provider: Provider, kbs: TrusteeLikeKbs) -> None:
    kbs.state.selected_hash = "sha512"  # the KBS checks the report data with this hash
    assert unwrap(provider, kbs, COCO[0], 0) == OPTSDATA[0]
    kbs.state.tokens.clear()  # every token expired at the KBS: 401, attest again once
    assert unwrap(provider, kbs, COCO[1], 1, "A256CTR") == OPTSDATA[1]
    assert provider.attestations == 2


def test_unknown_resource_and_wrong_kek_are_named(provider: Provider, kbs: TrusteeLikeKbs) -> None:
    missing = coco_packet("kbs:///default/image-kek/gone", os.urandom(32), OPTSDATA[0], "A256GCM")
    with pytest.raises(LayersealError, match=r"keyunwrap kbs:///default/image-kek/gone: .*HTTP 404"):
        provider.handle(request_for(kbs, missing))
    wrong = coco_packet(f"kbs:///{COCO[0]}", os.urandom(32), OPTSDATA[0], "A256GCM")
    with pytest.raises(LayersealError, match="expected to open with its KEK"):
        provider.handle(request_for(kbs, wrong))
