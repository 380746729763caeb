"""``layerseal containerd decode`` as containerd runs it: stdin, stdout, fd 3, env, one stderr line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.enclayer import EncLayer, encrypted_layer, tampered
from layerseal.containerd.contentstore import blobs_dir
from layerseal.containerd.payload import encode_payload
from layerseal.crypto.keys import generate_key, private_key_to_pem
from layerseal.image import mediatypes as mt
from layerseal.image.digest import Digest

ENC_GZIP = mt.encrypted_type(mt.OCI_LAYER_GZIP)
KEY = generate_key("EC-P256")
PEM = private_key_to_pem(KEY)


@pytest.fixture(scope="module")
def layer() -> EncLayer:
    return encrypted_layer([KEY.public_key()], size=200_000)


def decode(
    tmp_path: Path, blob: bytes, *args: str, payload: bytes | None = None, media_type: str = ENC_GZIP
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERSEAL_")}
    env["STREAM_PROCESSOR_MEDIATYPE"] = media_type
    cmd = [sys.executable, "-m", "layerseal.cli.main", "containerd", "decode", "--linger", "0"]
    cmd += ["--spool-dir", str(tmp_path / "spool"), *args]
    if payload is None:
        return subprocess.run(cmd, input=blob, capture_output=True, env=env, timeout=60)
    r, w = os.pipe()
    os.write(w, payload)  # small: fits the pipe buffer
    os.close(w)
    try:
        # the pipe becomes fd 3, as containerd's cmd.ExtraFiles[0] does
        shell = ["bash", "-c", f'exec "$@" 3<&{r} {r}<&-', "bash", *cmd]
        return subprocess.run(shell, input=blob, capture_output=True, env=env, timeout=60, pass_fds=(r,))
    finally:
        os.close(r)


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert text.startswith("layerseal containerd decode: ")
    return text


def test_payload_keys_and_descriptor_on_fd3(tmp_path: Path, layer: EncLayer) -> None:
    payload = encode_payload({"privkeys": [PEM]}, layer.descriptor.to_json())
    r = decode(tmp_path, layer.blob, payload=payload)
    assert r.returncode == 0, r.stderr
    assert r.stdout == layer.plain
    assert r.stderr == b""


def test_keys_directory_and_content_store_lookup(tmp_path: Path, layer: EncLayer) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "node.key").write_bytes(PEM)
    (keys / "node.pub").write_bytes(b"a public key is skipped")
    root = tmp_path / "ctd"
    manifest = json.dumps({"schemaVersion": 2, "layers": [layer.descriptor.to_json()]}).encode()
    (blobs_dir(root)).mkdir(parents=True)
    (blobs_dir(root) / Digest.of(manifest).hex).write_bytes(manifest)
    r = decode(tmp_path, layer.blob, "--decryption-keys-path", str(keys), "--containerd-root", str(root))
    assert r.returncode == 0, r.stderr
    assert r.stdout == layer.plain


def test_tampered_layer_exit_3_one_line_nothing_on_stdout(tmp_path: Path, layer: EncLayer) -> None:
    blob, desc = tampered(layer)
    r = decode(tmp_path, blob, payload=encode_payload({"privkeys": [PEM]}, desc.to_json()))
    assert r.returncode == 3
    assert r.stdout == b""
    assert "HMAC mismatch" in one_line(r.stderr)


def test_errors_are_one_line_with_their_exit_status(tmp_path: Path, layer: EncLayer) -> None:
    # no payload and no manifest naming the blob
    r = decode(tmp_path, layer.blob, "--containerd-root", str(tmp_path / "nowhere"))
    assert (r.returncode, r.stdout) == (2, b"")
    assert "containerd content store" in one_line(r.stderr)
    # a key that does not open the layer
    other = private_key_to_pem(generate_key("EC-P256"))
    r = decode(
        tmp_path, layer.blob, payload=encode_payload({"privkeys": [other]}, layer.descriptor.to_json())
    )
    assert (r.returncode, r.stdout) == (2, b"")
    assert "expected one of the given decryption keys" in one_line(r.stderr)
    # a garbage key in the payload names itself, without echoing the bytes
    r = decode(tmp_path, layer.blob, payload=encode_payload({"privkeys": [b"SECRET-ish"]}, None))
    assert r.returncode == 2
    text = one_line(r.stderr)
    assert "payload privkeys[0]" in text and "SECRET-ish" not in text
    # an unencrypted media type
    r = decode(tmp_path, layer.blob, media_type=mt.OCI_LAYER_GZIP)
    assert r.returncode == 2 and "STREAM_PROCESSOR_MEDIATYPE" in one_line(r.stderr)
