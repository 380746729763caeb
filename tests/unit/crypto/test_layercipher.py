"""The streaming ocicrypt cipher against an independent one-shot computation."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from layerseal.crypto.layercipher import LayerDecryptor, LayerEncryptor, decrypt_views
from layerseal.errors import IntegrityError, MisuseError
from layerseal.image.digest import Digest
from layerseal.image.encryption import PrivateOptions, PublicOptions


def reference_encrypt(key: bytes, nonce: bytes, data: bytes) -> tuple[bytes, bytes]:
    ct = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor().update(data)
    return ct, hmac.new(key, ct, hashlib.sha256).digest()


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300_000), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_round_trip_across_chunk_boundaries(data: bytes, cuts: list[int]) -> None:
    key, nonce = os.urandom(32), os.urandom(16)
    enc = LayerEncryptor(key, nonce)
    ct = b"".join(enc.update(c) for c in chunked(data, cuts))
    pub, priv = enc.finalize()
    want_ct, want_mac = reference_encrypt(key, nonce, data)
    assert ct == want_ct
    assert pub.hmac == want_mac
    assert priv.digest == Digest.of(data)
    dec = LayerDecryptor(pub, priv)
    pt = b"".join(dec.update(c) for c in chunked(ct, list(reversed(cuts))))
    assert dec.finalize() == Digest.of(data)
    assert pt == data


def test_counter_wraps_like_ocicrypt() -> None:
    # nonce is the full 128-bit counter: a near-overflow value must wrap, not raise
    key, nonce = os.urandom(32), b"\xff" * 15 + b"\xfe"
    data = os.urandom(100)
    enc = LayerEncryptor(key, nonce)
    ct = enc.update(data)
    enc.finalize()
    assert ct == reference_encrypt(key, nonce, data)[0]


def _sealed(data: bytes) -> tuple[bytes, PublicOptions, PrivateOptions]:
    enc = LayerEncryptor()
    ct = enc.update(data)
    pub, priv = enc.finalize()
    return ct, pub, priv


@pytest.mark.parametrize("position", [0, 1, 4095, 70_000, -1])
def test_flipped_byte_anywhere_fails_hmac(position: int) -> None:
    data = os.urandom(70_001)
    ct, pub, priv = _sealed(data)
    bad = bytearray(ct)
    bad[position] ^= 0x01
    dec = LayerDecryptor(pub, priv, "layer 0")
    dec.update(bytes(bad))
    with pytest.raises(IntegrityError, match="layer 0: HMAC mismatch"):
        dec.finalize()


def test_wrong_key_and_truncation_fail() -> None:
    ct, pub, priv = _sealed(os.urandom(5000))
    wrong = PrivateOptions(os.urandom(32), priv.nonce, priv.digest)
    dec = LayerDecryptor(pub, wrong)
    dec.update(ct)
    with pytest.raises(IntegrityError):
        dec.finalize()
    dec2 = LayerDecryptor(pub, priv)
    dec2.update(ct[:-1])
    with pytest.raises(IntegrityError):
        dec2.finalize()


def test_recorded_digest_of_another_blob_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """ocicrypt records the digest of the blob its caller handed it (skopeo: the source before
    recompression): the HMAC authenticates, the decrypted digest is computed and returned."""
    ct, pub, priv = _sealed(b"payload")
    recorded = PrivateOptions(priv.symkey, priv.nonce, Digest.of(b"the source before recompression"))
    dec = LayerDecryptor(pub, recorded, "layer 3")
    assert dec.update(ct) == b"payload"
    with caplog.at_level(logging.DEBUG, logger="layerseal.crypto.layercipher"):
        assert dec.finalize() == Digest.of(b"payload")
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG
    assert "layer 3" in record.getMessage() and str(Digest.of(b"payload")) in record.getMessage()


def test_matching_recorded_digest_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    ct, pub, priv = _sealed(b"payload")
    dec = LayerDecryptor(pub, priv)
    dec.update(ct)
    with caplog.at_level(logging.DEBUG):
        assert dec.finalize() == priv.digest
    assert not caplog.records


def test_without_compute_digest_finalize_only_authenticates() -> None:
    ct, pub, priv = _sealed(b"payload")
    dec = LayerDecryptor(pub, priv, compute_digest=False)
    dec.update(ct)
    assert dec.finalize() is None
    bad = LayerDecryptor(pub, priv, compute_digest=False)
    bad.update(ct[:-1] + bytes([ct[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="HMAC mismatch"):
        bad.finalize()


def test_state_machine_misuse() -> None:
    enc = LayerEncryptor()
    enc.finalize()
    with pytest.raises(MisuseError):
        enc.update(b"x")
    with pytest.raises(MisuseError):
        enc.finalize()
    with pytest.raises(MisuseError):
        LayerEncryptor(b"short")


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=300_000), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_update_into_matches_update(data: bytes, cuts: list[int]) -> None:
    ct, pub, priv = _sealed(data)
    dec = LayerDecryptor(pub, priv)
    out = bytearray(len(ct) + 15)
    pt = b"".join(bytes(dec.update_into(c, out)) for c in chunked(ct, cuts))
    assert pt == data
    assert dec.finalize() == Digest.of(data)


def test_update_into_mixed_with_update_keeps_the_digest_in_order() -> None:
    data = os.urandom(300_000)
    ct, pub, priv = _sealed(data)
    dec = LayerDecryptor(pub, priv)
    pt = dec.update(ct[:100_000]) + bytes(dec.update_into(ct[100_000:], bytearray(200_015)))
    assert pt == data
    assert dec.finalize() == Digest.of(data)


def test_decrypt_views_stream_and_authenticate_at_the_end() -> None:
    data = os.urandom(1_000_000)
    ct, pub, priv = _sealed(data)
    pieces = chunked(ct, [70_000, 300_000, 300_001, 900_000])
    views = decrypt_views(pieces, LayerDecryptor(pub, priv, compute_digest=False), buffers=3)
    assert b"".join(bytes(v) for v in views) == data
    bad = [*pieces[:-1], pieces[-1][:-1] + bytes([pieces[-1][-1] ^ 1])]
    out = []
    with pytest.raises(IntegrityError, match="layer 2: HMAC mismatch"):
        for v in decrypt_views(bad, LayerDecryptor(pub, priv, "layer 2"), buffers=3):
            out.append(bytes(v))
    assert len(out) == len(bad)  # all the (unauthenticated) plaintext came before the error


def test_decrypt_views_never_overwrite_a_view_still_held() -> None:
    # a consumer keeping every view (more than the ring holds) still sees each chunk intact
    data = os.urandom(2_000_000)
    ct, pub, priv = _sealed(data)
    pieces = [ct[i : i + 100_000] for i in range(0, len(ct), 100_000)]
    held = list(decrypt_views(pieces, LayerDecryptor(pub, priv), buffers=2))
    assert b"".join(bytes(v) for v in held) == data


def test_decrypt_views_reuse_buffers_a_consumer_let_go() -> None:
    data = os.urandom(1_000_000)
    ct, pub, priv = _sealed(data)
    pieces = [ct[i : i + 100_000] for i in range(0, len(ct), 100_000)]
    bases: list[object] = []  # the buffers themselves, kept alive (unlike views, that does not pin them)
    got = bytearray()
    for v in decrypt_views(pieces, LayerDecryptor(pub, priv), buffers=2):
        assert isinstance(v.obj, bytearray)
        bases.append(v.obj)
        got += v
        v.release()
    assert got == data
    assert len({id(b) for b in bases}) == 2
