"""Bad input to ``layerseal copy``: a clear one-line error, non-zero exit, destination untouched."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.images import KeyPair, blob_path, make_image, make_keys, manifest_of, tree_snapshot
from layerseal.cli.main import main
from layerseal.image.digest import Digest

pytestmark = pytest.mark.integration

PUBOPTS = "org.opencontainers.image.enc.pubopts"
JWE_KEYS = "org.opencontainers.image.enc.keys.jwe"


@pytest.fixture
def encrypted(tmp_path: Path) -> tuple[Path, KeyPair]:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "zstd"), big=200_000)
    key = make_keys(tmp_path / "keys", "ec256")
    assert (
        main(
            [
                "copy",
                "-q",
                "--encryption-key",
                f"jwe:{key.public}",
                f"oci:{tmp_path}/src:v1",
                f"oci:{tmp_path}/enc:v1",
            ]
        )
        == 0
    )
    # a destination with other content, which must survive every failed copy unchanged
    make_image(f"oci:{tmp_path}/dst:other", compressions=("gzip",), big=10)
    return tmp_path, key


def tamper(
    layout: Path,
    *,
    layer: int = 0,
    blob: Callable[[bytes], bytes] | None = None,
    descriptor: Callable[[dict[str, Any]], None] | None = None,
    manifest_bytes: bytes | None = None,
    fix_digest: bool = True,
) -> None:
    """Change a layer blob and/or descriptor and re-point the tag at the new manifest."""
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    _, m = manifest_of(layout, "v1")
    desc = m["layers"][layer]  # type: ignore[index]
    if blob is not None:
        old = blob_path(layout, desc["digest"])
        data = blob(old.read_bytes())
        if fix_digest:
            desc["digest"], desc["size"] = str(Digest.of(data)), len(data)
            blob_path(layout, desc["digest"]).write_bytes(data)
        else:
            old.write_bytes(data)
    if descriptor is not None:
        descriptor(desc)
    raw = manifest_bytes if manifest_bytes is not None else json.dumps(m).encode()
    d = Digest.of(raw)
    blob_path(layout, str(d)).write_bytes(raw)
    entry["digest"], entry["size"] = str(d), len(raw)
    (layout / "index.json").write_text(json.dumps(index))


def run_fail(tmp: Path, key: KeyPair, capsys: pytest.CaptureFixture[str], code: int, message: str) -> None:
    before = tree_snapshot(tmp / "dst")
    status = main(
        ["copy", "-q", "--decryption-key", str(key.private), f"oci:{tmp}/enc:v1", f"oci:{tmp}/dst:new"]
    )
    err = capsys.readouterr().err
    assert status == code, err
    assert message in err or re.search(message, err), err
    assert err.count("\n") == 1 and err.startswith("layerseal: error: ")
    assert tree_snapshot(tmp / "dst") == before  # no partial blob, no index entry
    assert "symkey" not in err


def flip(position: int) -> Callable[[bytes], bytes]:
    def f(data: bytes) -> bytes:
        b = bytearray(data)
        b[position] ^= 0x40
        return bytes(b)

    return f


@pytest.mark.parametrize("position", [0, 1000, 150_000, -1])
def test_flipped_ciphertext_byte_fails_hmac(
    encrypted: tuple[Path, KeyPair], capsys: Any, position: int
) -> None:
    tmp, key = encrypted
    tamper(tmp / "enc", blob=flip(position))
    run_fail(tmp, key, capsys, 3, r"layer 0 \(sha256:[0-9a-f]{64}\): HMAC mismatch")


def test_flipped_byte_without_fixing_digest_fails_digest(
    encrypted: tuple[Path, KeyPair], capsys: Any
) -> None:
    tmp, key = encrypted
    tamper(tmp / "enc", layer=1, blob=flip(7), fix_digest=False)
    run_fail(tmp, key, capsys, 3, "expected digest sha256:")


def test_truncated_blob(encrypted: tuple[Path, KeyPair], capsys: Any) -> None:
    tmp, key = encrypted
    tamper(tmp / "enc", blob=lambda d: d[:-100])
    run_fail(tmp, key, capsys, 3, "HMAC mismatch")


def test_truncated_blob_with_original_size(encrypted: tuple[Path, KeyPair], capsys: Any) -> None:
    tmp, key = encrypted
    tamper(tmp / "enc", blob=lambda d: d[:-100], fix_digest=False)
    run_fail(tmp, key, capsys, 3, r"expected \d+ bytes, seen \d+")


def test_wrong_key_names_the_layer(encrypted: tuple[Path, KeyPair], capsys: Any) -> None:
    tmp, _ = encrypted
    other = make_keys(tmp / "other", "rsa")
    run_fail(
        tmp, other, capsys, 2, r"layer \d \(sha256:[0-9a-f]{64}\): expected one of the given decryption keys"
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["annotations"].pop(PUBOPTS), "expected annotation org.opencontainers.image.enc.pubopts"),
        (lambda d: d["annotations"].update({PUBOPTS: "%%%"}), "standard base64"),
        (
            lambda d: d["annotations"].update(
                {PUBOPTS: base64.b64encode(b'{"cipher":"AES_128_GCM"}').decode()}
            ),
            "layer cipher: expected 'AES_256_CTR_HMAC_SHA256', seen 'AES_128_GCM'",
        ),
        (lambda d: d["annotations"].update({JWE_KEYS: base64.b64encode(b"{garbage").decode()}), "JWE"),
        (lambda d: d["annotations"].pop(JWE_KEYS), "no org.opencontainers.image.enc.keys"),
    ],
)
def test_garbled_annotations(encrypted: tuple[Path, KeyPair], capsys: Any, mutate: Any, message: str) -> None:
    tmp, key = encrypted
    tamper(tmp / "enc", descriptor=mutate)
    run_fail(tmp, key, capsys, 2, message)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"this is not json", "expected JSON"),
        (b'{"schemaVersion":2,"layers":[]}', "field 'config' is missing"),
        (
            b'{"schemaVersion":2,"config":{"mediaType":"x","size":1},"layers":[]}',
            "config: field 'digest' is missing",
        ),
    ],
)
def test_malformed_manifest(encrypted: tuple[Path, KeyPair], capsys: Any, raw: bytes, message: str) -> None:
    tmp, key = encrypted
    tamper(tmp / "enc", manifest_bytes=raw)
    run_fail(tmp, key, capsys, 2, message)


def test_plain_copy_of_corrupt_blob(tmp_path: Path, capsys: Any) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "gzip"))
    _, m = manifest_of(tmp_path / "src", "v1")
    p = blob_path(tmp_path / "src", m["layers"][1]["digest"])  # type: ignore[index]
    p.write_bytes(flip(-1)(p.read_bytes()))
    status = main(["copy", "-q", f"oci:{tmp_path}/src:v1", f"oci:{tmp_path}/out:v1"])
    assert status == 3
    assert "expected digest" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_process_exit_status_and_verbose_traceback(encrypted: tuple[Path, KeyPair]) -> None:
    tmp, _ = encrypted
    other = make_keys(tmp / "other", "ec384")
    cmd = [sys.executable, "-m", "layerseal.cli.main", "copy", "-q", "--decryption-key", str(other.private)]
    cmd += [f"oci:{tmp}/enc:v1", f"oci:{tmp}/x:v1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([cmd[0], *cmd[1:3], "-v", *cmd[3:]], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_encrypt_layer_out_of_range(tmp_path: Path, capsys: Any) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",), big=10)
    key = make_keys(tmp_path / "k", "ec256")
    status = main(
        [
            "copy",
            "--encryption-key",
            f"jwe:{key.public}",
            "--encrypt-layer",
            "3",
            f"oci:{tmp_path}/src:v1",
            f"oci:{tmp_path}/o:v1",
        ]
    )
    assert status == 2
    assert "--encrypt-layer 3: expected a position from -1 to 0" in capsys.readouterr().err
