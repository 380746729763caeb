"""A registry that asks to authenticate again (HTTP 401) in the middle of an upload.

A bearer token can expire, or be revoked, while a layer is on its way.  The 401 comes
after the request body was sent: a streamed body is gone by then, so the client must
re-authenticate and start the blob over from a fresh source (or fail clearly), never
send the request again with an empty body.  The fault proxy answers one PATCH with the
token server's own challenge, as the registry does when a token no longer suffices.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_helpers import LAYER, PASSWORD, SERVICE, USER, TokenRegistry, desc_of, fast_options

from helpers.images import make_image
from layerseal.cli.main import main
from layerseal.errors import TransportError
from layerseal.image.descriptor import Descriptor
from layerseal.image.transport import CHUNK_SIZE
from layerseal.registry import open_registry_destination, open_registry_source
from support.fault_proxy import Fault, FaultProxy

pytestmark = pytest.mark.integration

BIG = 2 * CHUNK_SIZE + 4321


@pytest.fixture
def proxy(token_registry: TokenRegistry) -> Iterator[FaultProxy]:
    host, port = token_registry.server.host.split(":")
    with FaultProxy(host, int(port)) as proxy:
        yield proxy


def _reauth_fault(token_registry: TokenRegistry, repository: str) -> Fault:
    challenge = (
        f'Bearer realm="{token_registry.tokens.realm}",service="{SERVICE}",'
        f'scope="repository:{repository}:pull,push"'
    )
    return Fault("status", path="/blobs/uploads/", method="PATCH", status=401, www_authenticate=challenge)


def _pieces(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 1 << 20):
        yield data[i : i + (1 << 20)]


def _random_blob() -> tuple[bytes, Descriptor]:
    data = os.urandom(BIG)
    return data, desc_of("sha256:" + hashlib.sha256(data).hexdigest(), data)


def _read_back(token_registry: TokenRegistry, blob: Descriptor) -> bytes:
    opts = fast_options(tls_verify=False, creds=f"{USER}:{PASSWORD}")
    with open_registry_source(f"docker://{token_registry.server.host}/tok/app:v1", opts) as src:
        return b"".join(src.iter_blob(blob))


def test_401_during_streamed_patch_never_resends_an_empty_body(
    token_registry: TokenRegistry, proxy: FaultProxy
) -> None:
    fault = proxy.add(_reauth_fault(token_registry, "tok/app"))
    data, blob = _random_blob()
    opts = fast_options(tls_verify=False, creds=f"{USER}:{PASSWORD}")
    with open_registry_destination(f"docker://{proxy.host}/tok/app:v1", opts) as dst:
        with pytest.raises(TransportError) as info:
            dst.put_blob(_pieces(data), LAYER, expected=blob)
        assert fault.hits == 1
        message = str(info.value)
        assert "HTTP 401" in message and "streamed" in message and "tok/app" in message
        assert PASSWORD not in message
        patches = [r for r in proxy.requests if r.method == "PATCH"]
        assert len(patches) == 1  # the consumed body was not sent again
        push_tokens = [
            i for i in token_registry.tokens.issued if i == (USER, ("repository:tok/app:pull,push",))
        ]
        assert len(push_tokens) == 2  # re-authenticated before giving up
        assert not dst.has_blob(blob)
        # the upload starts over from a fresh source, with the new token
        fetches = dst.client.auth.token_fetches
        assert dst.put_blob(_pieces(data), LAYER, expected=blob) == blob
        assert dst.client.auth.token_fetches == fetches  # the new token serves
    assert _read_back(token_registry, blob) == data


def test_401_during_a_chunk_resends_that_chunk_after_reauthenticating(
    token_registry: TokenRegistry, proxy: FaultProxy
) -> None:
    fault = proxy.add(_reauth_fault(token_registry, "tok/app"))
    data, blob = _random_blob()
    opts = fast_options(tls_verify=False, creds=f"{USER}:{PASSWORD}", upload_chunk_limit=CHUNK_SIZE)
    with open_registry_destination(f"docker://{proxy.host}/tok/app:v1", opts) as dst:
        assert dst.put_blob(_pieces(data), LAYER, expected=blob) == blob
        assert dst.client.auth.token_fetches == 2
    assert fault.hits == 1
    assert _read_back(token_registry, blob) == data


def test_copy_transfers_the_layer_again_after_a_401_mid_upload(
    tmp_path: Path, token_registry: TokenRegistry, proxy: FaultProxy
) -> None:
    make_image(f"oci:{tmp_path}/src:v1", compressions=("gzip",), big=BIG)
    fault = proxy.add(_reauth_fault(token_registry, "t/c"))
    status = main(
        [
            "copy",
            "-q",
            "--dest-tls-verify=false",
            f"--dest-creds={USER}:{PASSWORD}",
            f"oci:{tmp_path}/src:v1",
            f"docker://{proxy.host}/t/c:v1",
        ]
    )
    assert status == 0
    assert fault.hits == 1
    copied = main(
        [
            "copy",
            "-q",
            "--src-tls-verify=false",
            f"--src-creds={USER}:{PASSWORD}",
            f"docker://{token_registry.server.host}/t/c:v1",
            f"oci:{tmp_path}/back:v1",
        ]
    )
    assert copied == 0
