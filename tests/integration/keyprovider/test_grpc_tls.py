"""The gRPC keyprovider over TLS and mutual TLS (ocicrypt >= 1.3's ``"grpc-tls"``)."""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from integration.keyprovider.conftest import World
from layerseal.cli import keyprovider as kpcli
from layerseal.errors import BadInputError
from layerseal.keyprovider import protocol
from layerseal.keyprovider.grpcserver import ServerTls, build_server, call
from layerseal.keyprovider.params import Settings
from layerseal.keyprovider.provider import Provider
from support.certs import TlsFiles, make_tls_files

pytestmark = pytest.mark.integration


def client_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A client CA and a certificate (clientAuth) it issued: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocicrypt clients")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skopeo")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "client-ca.pem", directory / "client.pem", directory / "client.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def wrap_request() -> bytes:
    opts = {"symkey": base64.b64encode(os.urandom(32)).decode(), "digest": "sha256:" + "cd" * 32}
    opts["cipheroptions"] = {"nonce": base64.b64encode(os.urandom(16)).decode()}  # type: ignore[assignment]
    ec_ = {"Parameters": {"attestation-agent": [base64.b64encode(b"Enabled").decode()]}}
    body = {
        "op": "keywrap",
        "keywrapparams": {"ec": ec_, "optsdata": base64.b64encode(json.dumps(opts).encode()).decode()},
    }
    return json.dumps(body).encode()


@pytest.fixture
def provider(kp_world: World) -> Provider:
    return Provider(
        "attestation-agent",
        Settings(kbs=kp_world.broker.url, repo="acme/tls", token_file=str(kp_world.token_file)),
        env={},
    )


def test_tls_server_answers_a_verifying_client_and_refuses_plaintext(
    provider: Provider, tmp_path: Path
) -> None:
    files: TlsFiles = make_tls_files(tmp_path)
    server, port = build_server(
        provider, "127.0.0.1:0", tls=ServerTls(str(files.server_cert), str(files.server_key))
    )
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=files.ca_cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            packet = protocol.parse_reply(call(channel, "WrapKey", wrap_request()), protocol.OP_WRAP)
            assert json.loads(packet)["kid"].startswith("kbs:///acme/layer-key/")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, pytest.raises(grpc.RpcError) as info:
            call(plain, "WrapKey", wrap_request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=None)
        provider.close()


def test_mutual_tls_requires_a_client_certificate_from_the_ca(provider: Provider, tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "server")
    ca, cert, key = client_cert(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_cert, other_key = client_cert(tmp_path / "other")
    tls = ServerTls(str(files.server_cert), str(files.server_key), str(ca))
    server, port = build_server(provider, "127.0.0.1:0", tls=tls)
    root = files.ca_cert.read_bytes()
    try:
        good = grpc.ssl_channel_credentials(root, key.read_bytes(), cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", good) as channel:
            assert protocol.parse_reply(call(channel, "WrapKey", wrap_request()), protocol.OP_WRAP)
        for creds in (
            grpc.ssl_channel_credentials(root),
            grpc.ssl_channel_credentials(root, other_key.read_bytes(), other_cert.read_bytes()),
        ):
            with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel, pytest.raises(grpc.RpcError):
                call(channel, "WrapKey", wrap_request(), timeout=5)
    finally:
        server.stop(grace=None)
        provider.close()


def test_bad_tls_files_are_clear_errors(provider: Provider, tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not pem")
    with pytest.raises(BadInputError, match=r"--tls-cert .*expected a readable PEM file"):
        build_server(
            provider, "127.0.0.1:0", tls=ServerTls(str(tmp_path / "missing"), str(tmp_path / "junk.pem"))
        )
    with pytest.raises(BadInputError, match="expected PEM, seen other data"):
        build_server(
            provider, "127.0.0.1:0", tls=ServerTls(str(tmp_path / "junk.pem"), str(tmp_path / "junk.pem"))
        )
    provider.close()


def test_config_writes_ocicrypt_grpc_tls_fields(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    kpcli.add_arguments(p)
    args = p.parse_args(
        [
            "config",
            "--grpc",
            "enclave.internal:50011",
            "--grpc-root-ca",
            "ca.pem",
            "--grpc-client-cert",
            "c.pem",
            "--grpc-client-key",
            "c.key",
            "--grpc-server-name",
            "enclave.internal",
        ]
    )
    entry = kpcli.ocicrypt_config(args)["key-providers"]["attestation-agent"]
    assert entry["grpc"] == "enclave.internal:50011"
    tls = entry["grpc-tls"]
    assert set(tls) == {
        "root-ca-file",
        "cert-file",
        "key-file",
        "server-name",
    }  # ocicrypt's GrpcTLS json names
    assert all(Path(tls[k]).is_absolute() for k in ("root-ca-file", "cert-file", "key-file"))
    plain = kpcli.ocicrypt_config(p.parse_args(["config", "--grpc", "127.0.0.1:1"]))
    assert plain == {"key-providers": {"attestation-agent": {"grpc": "127.0.0.1:1"}}}
