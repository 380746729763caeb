"""Passphrase-protected keys (skopeo's ``key.pem:PASS`` and the other sources) and ``pkcs7:``
X.509 recipients, both directions with Debian's skopeo."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers.images import make_image, manifest_of
from helpers.registry import skopeo_copy
from layerseal.cli.main import main

pytestmark = pytest.mark.integration
PASSWORD = "correct horse"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(d / "rsa.pem"))
    openssl("pkey", "-in", str(d / "rsa.pem"), "-pubout", "-out", str(d / "rsa.pub"))
    # the legacy encrypted PEM (Proc-Type/DEK-Info) skopeo's ocicrypt reads, and encrypted PKCS#8
    openssl(
        "rsa",
        "-in",
        str(d / "rsa.pem"),
        "-aes256",
        "-traditional",
        "-passout",
        f"pass:{PASSWORD}",
        "-out",
        str(d / "rsa-enc.pem"),
    )
    openssl(
        "pkcs8",
        "-topk8",
        "-in",
        str(d / "rsa.pem"),
        "-v2",
        "aes-256-cbc",
        "-passout",
        f"pass:{PASSWORD}",
        "-out",
        str(d / "rsa-enc.p8"),
    )
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(d / "ec.pem"))
    openssl("pkey", "-in", str(d / "ec.pem"), "-pubout", "-out", str(d / "ec.pub"))
    openssl(
        "ec",
        "-in",
        str(d / "ec.pem"),
        "-aes256",
        "-passout",
        f"pass:{PASSWORD}",
        "-out",
        str(d / "ec-enc.pem"),
    )
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(d / "rsa.pem"),
        "-subj",
        "/CN=layerseal test",
        "-days",
        "2",
        "-out",
        str(d / "rsa.crt"),
    )
    (d / "pw").write_text(PASSWORD + "\n")
    assert "ENCRYPTED" in (d / "rsa-enc.pem").read_text()
    return {p.name: p for p in d.iterdir()}


@pytest.fixture
def image(tmp_path: Path) -> str:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip", "zstd"), big=2000)
    return f"oci:{tmp_path}/src:v1"


def same_as_source(tmp_path: Path, out: str) -> bool:
    return manifest_of(tmp_path / out, "v1") == manifest_of(tmp_path / "src", "v1")


def layerseal_decrypt(tmp_path: Path, src: str, out: str, *keys: str) -> int:
    args = ["copy", "-q"] + [a for k in keys for a in ("--decryption-key", k)]
    return main([*args, src, f"oci:{tmp_path}/{out}:v1"])


@pytest.mark.parametrize("key", ["rsa-enc.pem", "rsa-enc.p8", "ec-enc.pem"])
def test_passphrase_keys_open_skopeo_images_in_every_source_form(
    tmp_path: Path, image: str, keys: dict[str, Path], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = keys["ec.pub" if key.startswith("ec") else "rsa.pub"]
    skopeo_copy("--encryption-key", f"jwe:{pub}", image, f"oci:{tmp_path}/enc:v1")
    enc = f"oci:{tmp_path}/enc:v1"
    path = keys[key]
    monkeypatch.setenv("LS_TEST_PW", PASSWORD)
    read, write = os.pipe()
    os.write(write, PASSWORD.encode())
    os.close(write)
    try:
        forms = [
            f"{path}:{PASSWORD}",
            f"{path}:pass={PASSWORD}",
            f"{path}:file={keys['pw']}",
            f"{path}:env=LS_TEST_PW",
        ]
        forms.append(f"{path}:fd={read}")
        for n, spec in enumerate(forms):
            assert layerseal_decrypt(tmp_path, enc, f"d{n}", spec) == 0, spec
            assert same_as_source(tmp_path, f"d{n}")
    finally:
        os.close(read)


def skopeo_decrypt_with_password(tmp_path: Path, src: str, keys: dict[str, Path], *extra: str) -> None:
    """skopeo with ``key.pem:PASS``.  Debian 12's skopeo is built with ocicrypt 1.0.3, whose
    processx509Certs reads the whole ``key.pem:PASS`` as a file name (fixed in ocicrypt 1.1.0):
    there the form fails as shown, and the same key without a password opens the image."""
    spec = f"{keys['rsa-enc.pem']}:{PASSWORD}"
    cmd = ["skopeo", "--insecure-policy", "copy", "-q", "--decryption-key", spec, *extra]
    r = subprocess.run([*cmd, src, f"oci:{tmp_path}/sk:v1"], capture_output=True, text=True)
    if r.returncode != 0:
        assert f"Unable to read file: open {spec}: no such file" in r.stderr, r.stderr
        skopeo_copy("--decryption-key", str(keys["rsa.pem"]), *extra, src, f"oci:{tmp_path}/sk:v1")


def test_skopeo_opens_layerseal_image_with_its_passphrase_form(
    tmp_path: Path, image: str, keys: dict[str, Path]
) -> None:
    assert (
        main(["copy", "-q", "--encryption-key", f"jwe:{keys['rsa.pub']}", image, f"oci:{tmp_path}/enc:v1"])
        == 0
    )
    skopeo_decrypt_with_password(tmp_path, f"oci:{tmp_path}/enc:v1", keys)
    assert same_as_source(tmp_path, "sk")
    # and layerseal with the very same value
    assert (
        layerseal_decrypt(tmp_path, f"oci:{tmp_path}/enc:v1", "ls", f"{keys['rsa-enc.pem']}:{PASSWORD}") == 0
    )


def test_wrong_or_missing_password_is_a_clear_error(
    tmp_path: Path, image: str, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["copy", "-q", "--encryption-key", f"jwe:{keys['rsa.pub']}", image, f"oci:{tmp_path}/enc:v1"])
        == 0
    )
    enc = f"oci:{tmp_path}/enc:v1"
    assert layerseal_decrypt(tmp_path, enc, "x", f"{keys['rsa-enc.pem']}:wrong-guess") == 2
    err = capsys.readouterr().err
    assert "expected the right password" in err and "wrong-guess" not in err
    assert layerseal_decrypt(tmp_path, enc, "y", str(keys["rsa-enc.pem"])) == 2
    assert "expected a password" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_pkcs7_layerseal_encrypts_skopeo_decrypts(tmp_path: Path, image: str, keys: dict[str, Path]) -> None:
    assert (
        main(["copy", "-q", "--encryption-key", f"pkcs7:{keys['rsa.crt']}", image, f"oci:{tmp_path}/enc:v1"])
        == 0
    )
    layer = manifest_of(tmp_path / "enc", "v1")[1]["layers"][0]  # type: ignore[index]
    assert set(layer["annotations"]) >= {"org.opencontainers.image.enc.keys.pkcs7"}  # type: ignore[index]
    # skopeo's ocicrypt needs the certificate beside the key for pkcs7
    skopeo_decrypt_with_password(
        tmp_path, f"oci:{tmp_path}/enc:v1", keys, "--decryption-key", str(keys["rsa.crt"])
    )
    assert same_as_source(tmp_path, "sk")
    assert layerseal_decrypt(tmp_path, f"oci:{tmp_path}/enc:v1", "ls", str(keys["rsa.pem"])) == 0
    assert same_as_source(tmp_path, "ls")


def test_pkcs7_skopeo_encrypts_layerseal_decrypts(tmp_path: Path, image: str, keys: dict[str, Path]) -> None:
    skopeo_copy("--encryption-key", f"pkcs7:{keys['rsa.crt']}", image, f"oci:{tmp_path}/enc:v1")
    enc = f"oci:{tmp_path}/enc:v1"
    # as a skopeo user passes them: key (with password) and certificate
    assert (
        layerseal_decrypt(tmp_path, enc, "a", f"{keys['rsa-enc.pem']}:{PASSWORD}", str(keys["rsa.crt"])) == 0
    )
    assert same_as_source(tmp_path, "a")
    assert layerseal_decrypt(tmp_path, enc, "b", str(keys["rsa.pem"])) == 0  # the certificate is not needed
    assert layerseal_decrypt(tmp_path, enc, "c", str(keys["ec.pem"])) == 2  # no key for it


def test_pkcs7_refuses_an_ec_certificate(
    tmp_path: Path, image: str, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(keys["ec.pem"]),
        "-subj",
        "/CN=ec",
        "-days",
        "2",
        "-out",
        str(tmp_path / "ec.crt"),
    )
    assert (
        main(
            [
                "copy",
                "-q",
                "--encryption-key",
                f"pkcs7:{tmp_path / 'ec.crt'}",
                image,
                f"oci:{tmp_path}/enc:v1",
            ]
        )
        == 2
    )
    assert "expected an RSA certificate" in capsys.readouterr().err
