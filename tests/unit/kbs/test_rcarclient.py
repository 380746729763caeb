"""The one KBS client over an in-memory transport (the seam both real transports fill)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping

import pytest

from layerseal.errors import TransportError
from layerseal.kbs.kbsforms import batch_absent
from layerseal.kbs.problems import PROBLEM_TYPE, PolicyDeniedError, UnauthenticatedError, error_for
from layerseal.kbs.rcarclient import KbsClient, Opener, Reply, Request, session_cookie

PATH = "acme/app/layer-1"  # not a layerseal key id: fetched with the per-resource GET


class Scripted:
    """Answers each request with the next scripted reply; records what was sent."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.sent: list[tuple[str, str, Mapping[str, str]]] = []

    def send(self, request: Request) -> Reply:
        self.sent.append((request.method, request.path, dict(request.headers)))
        return self.replies.pop(0)


def _credentials(tokens: list[str]) -> tuple[Callable[[str | None], tuple[str, Opener]], list[str | None]]:
    refusals: list[str | None] = []

    def credentials(refused: str | None) -> tuple[str, Opener]:
        refusals.append(refused)
        token = tokens[0] if refused is None else tokens[1]
        return token, lambda doc: base64.b64decode(doc["kek"])

    return credentials, refusals


def test_a_refused_token_is_renewed_once() -> None:
    ok = Reply(200, json.dumps({"kek": base64.b64encode(b"k" * 32).decode()}).encode())
    transport = Scripted([Reply(401, b'{"detail":"expired"}'), ok])
    credentials, refusals = _credentials(["old", "new"])
    assert KbsClient(transport).resource(credentials, PATH) == b"k" * 32
    assert refusals == [None, "old"]
    assert [h["Authorization"] for _, _, h in transport.sent] == ["Bearer old", "Bearer new"]


def test_a_second_refusal_is_the_error() -> None:
    transport = Scripted([Reply(401, b"no"), Reply(401, b'{"detail":"revoked"}')])
    credentials, _ = _credentials(["old", "new"])
    with pytest.raises(UnauthenticatedError, match=r"HTTP 401: revoked"):
        KbsClient(transport).resource(credentials, PATH)
    assert len(transport.sent) == 2


def test_session_cookie_among_set_cookie_values() -> None:
    assert session_cookie(["a=b", 'kbs-session-id="s1"; Path=/; HttpOnly']) == "s1"
    assert session_cookie(["a=b"]) is None


def test_answers_that_are_no_json_are_transport_errors_naming_the_request() -> None:
    client = KbsClient(Scripted([Reply(200, b"<html>proxy</html>"), Reply(200, b"[" * 100 + b"]" * 100)]))
    for _ in range(2):
        with pytest.raises(TransportError, match=r"^broker POST /kbs/v0/attest: expected JSON"):
            client.attest("s1", {})
    nonce_less = KbsClient(Scripted([Reply(200, b"not json", set_cookies=("kbs-session-id=s1",))]))
    with pytest.raises(TransportError, match="expected a nonce"):
        nonce_less.challenge("sample")


def test_error_bodies_are_read_for_details_only() -> None:
    assert str(error_for("GET", "/x", 404, b"plain text")) == "broker GET /x: HTTP 404: plain text"
    assert str(error_for("GET", "/x", 404, b'{"detail":"no key"}')) == "broker GET /x: HTTP 404: no key"
    assert str(error_for("GET", "/x", 404, b'["detail"]')) == 'broker GET /x: HTTP 404: ["detail"]'
    assert isinstance(error_for("GET", "/x", 403, b'{"type":"t/policy-denied"}'), PolicyDeniedError)
    assert batch_absent(404, b"Not Found") and batch_absent(404, b"[]")
    assert not batch_absent(404, json.dumps({"type": PROBLEM_TYPE + "/not-found"}).encode())
