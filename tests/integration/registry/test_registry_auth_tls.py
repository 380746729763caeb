"""Basic auth, TLS with a private CA, and bearer tokens against the real docker-registry."""

from __future__ import annotations

import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from registry_helpers import (
    PASSWORD,
    READER,
    READER_PASSWORD,
    USER,
    TlsRegistry,
    TokenRegistry,
    desc_of,
    fast_options,
    pull_image,
    push_image,
)

from layerseal.errors import DeniedError, TransportError
from layerseal.registry import open_registry_destination, open_registry_source
from support.oci_images import make_image
from support.registry_server import RegistryServer

pytestmark = pytest.mark.integration


def test_basic_auth_push_pull(basic_registry: RegistryServer) -> None:
    image = make_image([{"a": b"basic"}])
    ref = f"docker://{basic_registry.host}/private/app:v1"
    opts = fast_options(tls_verify=False, creds=f"{USER}:{PASSWORD}")
    with open_registry_destination(ref, opts) as dst:
        push_image(dst, image)
    with open_registry_source(ref, opts) as src:
        assert pull_image(src) == (image.manifest, image.blobs)


def test_basic_auth_from_docker_config(basic_registry: RegistryServer, tmp_path: Path) -> None:
    image = make_image([{"a": b"authfile"}])
    ref = f"docker://{basic_registry.host}/private/app:v1"
    with open_registry_destination(ref, fast_options(tls_verify=False, creds=f"{USER}:{PASSWORD}")) as dst:
        push_image(dst, image)
    docker_dir = Path(os.environ["HOME"]) / ".docker"
    docker_dir.mkdir(parents=True)
    entry = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker_dir / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": entry}}}))
    with open_registry_source(ref, fast_options(tls_verify=False)) as src:
        assert src.get_manifest()[0] == image.manifest


def test_basic_auth_refusals(basic_registry: RegistryServer) -> None:
    ref = f"docker://{basic_registry.host}/private/app:v1"
    with open_registry_source(ref, fast_options(tls_verify=False)) as src, pytest.raises(DeniedError) as none:
        src.get_manifest()
    assert "expected credentials" in str(none.value) and "private/app" in str(none.value)
    bad = fast_options(tls_verify=False, creds=f"{USER}:not-{PASSWORD}")
    with open_registry_source(ref, bad) as src, pytest.raises(DeniedError) as wrong:
        src.get_manifest()
    assert "HTTP 401" in str(wrong.value) and "private/app" in str(wrong.value)
    assert f"not-{PASSWORD}" not in str(wrong.value)


def test_tls_with_private_ca(tls_registry: TlsRegistry) -> None:
    image = make_image([{"a": b"tls"}])
    ref = f"docker://{tls_registry.server.host}/secure/app:v1"
    opts = fast_options(ca_file=str(tls_registry.files.ca_cert))
    with open_registry_destination(ref, opts) as dst:
        push_image(dst, image)
        assert dst.client.base_url().startswith("https://")
    with open_registry_source(ref, opts) as src:
        assert pull_image(src) == (image.manifest, image.blobs)


def test_tls_is_verified_by_default(tls_registry: TlsRegistry) -> None:
    ref = f"docker://{tls_registry.server.host}/secure/app:v1"
    with (
        open_registry_source(ref, fast_options()) as src,
        pytest.raises(TransportError, match=r"certificate of .* not trusted"),
    ):
        src.get_manifest()
    # --tls-verify=false still speaks TLS when the registry has it, just without checking
    image = make_image([{"a": b"insecure"}])
    with open_registry_destination(ref, fast_options(tls_verify=False)) as dst:
        push_image(dst, image)
        assert dst.client.base_url().startswith("https://")


def test_bearer_token_flow(token_registry: TokenRegistry) -> None:
    image = make_image([{f"f{i}": os.urandom(50_000)} for i in range(6)])
    ref = f"docker://{token_registry.server.host}/tok/app:v1"
    opts = fast_options(tls_verify=False, creds=f"{USER}:{PASSWORD}")
    with open_registry_destination(ref, opts) as dst:
        push_image(dst, image)
        push_tokens = dst.client.auth.token_fetches
    assert push_tokens == 1
    assert token_registry.tokens.issued == [(USER, ("repository:tok/app:pull,push",))]
    with open_registry_source(ref, opts) as src:
        data, _ = src.get_manifest()
        assert data == image.manifest
        with ThreadPoolExecutor(4) as pool:
            got = dict(
                pool.map(lambda d: (d, b"".join(src.iter_blob(desc_of(d, image.blobs[d])))), image.blobs)
            )
        assert got == image.blobs
        assert src.client.auth.token_fetches == 1  # one pull token, reused by every request and thread


def test_bearer_reader_cannot_push(token_registry: TokenRegistry) -> None:
    ref = f"docker://{token_registry.server.host}/tok/app:v1"
    reader = fast_options(tls_verify=False, creds=f"{READER}:{READER_PASSWORD}")
    with open_registry_destination(ref, reader) as dst, pytest.raises(DeniedError) as info:
        dst.put_blob(iter([b"data"]), "application/octet-stream")
    assert "tok/app" in str(info.value) and READER_PASSWORD not in str(info.value)


def test_bearer_wrong_password_and_anonymous(token_registry: TokenRegistry) -> None:
    ref = f"docker://{token_registry.server.host}/tok/app:v1"
    with (
        open_registry_source(ref, fast_options(tls_verify=False, creds=f"{USER}:nope")) as src,
        pytest.raises(DeniedError, match=r"token server .* expected a token for user 'alice'"),
    ):
        src.get_manifest()
    with (
        open_registry_source(ref, fast_options(tls_verify=False)) as src,
        pytest.raises(DeniedError, match="anonymous access"),
    ):
        src.get_manifest()
