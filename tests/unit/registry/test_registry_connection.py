"""Wide socket reads for registry connections only, and the one retry policy's rules for bodies."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import httpx
import pytest
from registry_fakes import FakeRegistry

from layerseal.errors import TransportError
from layerseal.registry import RegistryClient, RetryPolicy
from layerseal.registry.attempts import Retrier
from layerseal.registry.connection import READ_SIZE
from layerseal.registry.options import RegistryOptions

BODY = os.urandom(8 * 1024 * 1024)


class _Blob(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


@pytest.fixture
def blob_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Blob)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _largest_read(response: httpx.Response) -> int:
    # without a chunk size, httpx hands on each socket read as it came
    return max(len(piece) for piece in response.iter_bytes())


def test_registry_connections_read_wide_and_nothing_else_changes(blob_server: str) -> None:
    default = httpcore._sync.http11.HTTP11Connection.READ_NUM_BYTES
    assert default == 64 * 1024  # importing the registry client patched nothing process-wide
    with (
        RegistryClient("127.0.0.1", RegistryOptions(tls_verify=False)) as client,
        client.session._http.stream("GET", blob_server + "/blob") as response,
    ):
        wide = _largest_read(response)
    with httpx.Client() as plain, plain.stream("GET", blob_server + "/blob") as response:
        narrow = _largest_read(response)
    assert narrow <= default < wide <= READ_SIZE


def test_a_streamed_body_gets_one_try_and_is_never_replayed_after_401() -> None:
    retrier = Retrier(RetryPolicy(max_attempts=5), None, lambda _: None)
    streamed = retrier.attempts("PATCH", replayable=False)
    assert streamed.limit == 1
    streamed.start()
    assert not streamed.after_unauthorized()
    assert not streamed.after_failure("HTTP 503")
    fixed = retrier.attempts("PUT")
    fixed.start()
    assert fixed.after_unauthorized() and fixed.number == 0  # a 401 is not a spent try


def test_401_to_a_streamed_patch_refreshes_the_token_and_fails_without_resending() -> None:
    fake = FakeRegistry(auth="bearer")
    refused: list[httpx.Request] = []

    def once(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH" and not refused:
            refused.append(request)
            request.read()
            challenge = (
                'Bearer realm="https://auth.test/token",service="fake",scope="repository:a/b:pull,push"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return None

    fake.hooks.append(once)
    data = os.urandom(3 * 1024 * 1024)
    c = RegistryClient("reg.test", fake.options(creds="alice:s3cret", upload_chunk_size=1024 * 1024))
    with pytest.raises(TransportError, match=r"HTTP 401.*streamed.*start over"):
        c.upload_blob("a/b", iter([data[:1_500_000], data[1_500_000:]]))
    patches = [r for r in fake.requests if r.method == "PATCH"]
    assert len(patches) == 1 and len(fake.deleted_uploads) == 1
    assert len(fake.token_requests) == 2  # the first token, then the one the 401 asked for
    assert not fake.blobs.get("a/b")
