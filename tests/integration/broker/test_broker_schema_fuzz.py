"""Schema-driven fuzzing of the live broker from its own OpenAPI document: no 5xx, ever.

Every operation of ``/openapi.json`` gets a bounded number of generated requests (bodies,
path and query parameters from the schemas, then mutated), sent with the admin token so
they reach past authentication, against a real broker on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Deployment
from layerseal.broker.openapi import openapi_document

pytestmark = pytest.mark.integration

CASES_PER_OPERATION = 25
ROUTE_PARAM = "{"


def test_openapi_document_declares_every_path_parameter_and_body() -> None:
    doc = openapi_document()
    bodiless = {
        ("post", "/api/v1/keys/{key_id}/revoke"),
        ("post", "/api/v1/keys/{key_id}/versions/{version}/{action}"),
        ("post", "/api/v1/tokens/{token_id}/revoke"),
    }
    for path, item in doc["paths"].items():
        wanted = {seg[1:-1] for seg in path.split("/") if seg.startswith(ROUTE_PARAM)}
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == wanted, (method, path)
            if method in ("post", "put") and (method, path) not in bodiless:
                assert "requestBody" in op, (method, path)


def test_openapi_document_covers_every_route(deployment: Deployment) -> None:
    from starlette.routing import Route

    from layerseal.broker.app import create_app

    served = httpx.get(deployment.url + "/openapi.json").json()
    assert served == openapi_document()
    app = create_app(_OfflineBroker())  # type: ignore[arg-type]  # routes only, never called
    for route in app.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {version:int} -> {version}
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in served["paths"][path], (method, path)


def _inject(value: Any, bad: str, which: int = 0) -> Any:
    """*value* with one of its strings (the *which*-th, cyclically) replaced by *bad*, or a
    new key if it holds none."""
    strings: list[tuple[Any, Any]] = []  # (container, key)

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if isinstance(v, str):
                strings.append((node, k))
            else:
                walk(v)

    value = json.loads(json.dumps(value))  # a copy
    if isinstance(value, str):
        return bad
    walk(value)
    if strings:
        container, key = strings[which % len(strings)]
        container[key] = bad
    elif isinstance(value, dict):
        value[bad] = 1
    elif isinstance(value, list):
        value.append(bad)
    return value


def _send(method: str, url: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, timeout=30, **kwargs)


class _OfflineBroker:
    listeners: list[Any] = []


def test_no_operation_answers_5xx(deployment: Deployment) -> None:
    schema = schemathesis.openapi.from_dict(openapi_document())
    admin = {"Authorization": f"Bearer {(deployment.workdir / 'admin.token').read_text().strip()}"}
    failures: list[str] = []
    counted = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:

        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(),
            auth=st.sampled_from([admin, {}]),
            bad=st.sampled_from([None, None, "\ud800", "a\x00b"]),
            which=st.integers(0, 7),
        )
        def run(case: Any, auth: dict[str, str], bad: str | None, which: int) -> None:
            nonlocal counted
            counted += 1
            headers = {**(case.headers or {}), **auth}
            if bad is None:
                response = case.call(base_url=deployment.url, headers=headers, timeout=30)
            else:  # text no database stores (hypothesis never makes surrogates)
                body = case.body if isinstance(case.body, dict | list) else {}
                query = _inject(case.query, bad, which) if case.query and "\x00" in bad else case.query
                try:
                    response = _send(
                        case.method,
                        deployment.url + case.formatted_path,
                        params=query,
                        content=json.dumps(
                            _inject(body, bad, which)
                        ).encode(),  # \ud800 escaped, as a client would
                        headers={**headers, "Content-Type": "application/json"},
                    )
                except httpx.LocalProtocolError:
                    return  # a header no HTTP client sends (schemathesis made it)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
                )

        run()
    assert counted >= 5 * len(operations)
    assert not failures, "\n".join(failures[:20])
    log = "".join(b.log.read_text() for b in deployment.brokers)
    assert "unhandled error" not in log, log[-3000:]
