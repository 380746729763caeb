"""An in-memory distribution registry behind ``httpx.MockTransport``, for unit tests."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

from layerseal.registry import RegistryOptions, RetryPolicy

Hook = Callable[[httpx.Request], httpx.Response | None]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BreakingStream(httpx.SyncByteStream):
    """Yields *data* then fails as a dropped connection would."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


@dataclass
class FakeRegistry:
    host: str = "reg.test"
    auth: str | None = None  # None | "basic" | "bearer"
    user: str = "alice"
    password: str = "s3cret"
    blobs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    manifests: dict[str, dict[str, tuple[bytes, str]]] = field(default_factory=dict)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)
    token_requests: list[httpx.Request] = field(default_factory=list)
    token_expires_in: int = 300
    deleted_uploads: list[str] = field(default_factory=list)

    def options(self, **kw: object) -> RegistryOptions:
        kw.setdefault("retry", RetryPolicy(max_attempts=4, base_delay=0.0, jitter=0.0))
        return RegistryOptions(transport=httpx.MockTransport(self.handle), **kw)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- helpers
    def add_blob(self, repo: str, data: bytes) -> str:
        self.blobs.setdefault(repo, {})[sha(data)] = data
        return sha(data)

    def add_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> None:
        self.manifests.setdefault(repo, {})[ref] = (data, media_type)
        self.manifests[repo][sha(data)] = (data, media_type)

    def _authorized(self, request: httpx.Request) -> httpx.Response | None:
        header = request.headers.get("authorization", "")
        if self.auth == "basic":
            good = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if header != good:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth == "bearer" and not header.startswith("Bearer tok-"):
            m = re.match(r"^/v2/(.+?)/(?:manifests|blobs|tags)", request.url.path)
            scope = f' ,scope="repository:{m.group(1)}:pull"' if m else ""
            return httpx.Response(
                401,
                headers={"WWW-Authenticate": f'Bearer realm="https://auth.test/token",service="fake"{scope}'},
                json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            )
        return None

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        good = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("authorization") != good:
            return httpx.Response(401, json={"details": "bad credentials"})
        scopes = request.url.params.get_list("scope")
        return httpx.Response(
            200,
            json={
                "token": f"tok-{len(self.token_requests)}-{'+'.join(scopes)}",
                "expires_in": self.token_expires_in,
            },
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for hook in list(self.hooks):
            response = hook(request)
            if response is not None:
                return response
        if request.url.host == "auth.test":
            return self._token(request)
        denied = self._authorized(request)
        if denied is not None:
            return denied
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        m = re.match(r"^/v2/(.+)/(manifests|blobs|tags|referrers)/(.*)$", path)
        if not m:
            return httpx.Response(404)
        repo, kind, rest = m.groups()
        if kind == "manifests":
            return self._manifests(request, repo, rest)
        if kind == "tags":
            return self._tags(request, repo)
        if kind == "referrers":
            return httpx.Response(404, text="404 page not found")
        if rest.startswith("uploads/"):
            return self._upload(request, repo, rest.removeprefix("uploads/"))
        return self._blob(request, repo, rest)

    def _error(self, status: int, code: str, message: str) -> httpx.Response:
        return httpx.Response(status, json={"errors": [{"code": code, "message": message}]})

    def _manifests(self, request: httpx.Request, repo: str, ref: str) -> httpx.Response:
        store = self.manifests.setdefault(repo, {})
        if request.method == "PUT":
            data = request.content
            store[ref] = (data, request.headers["content-type"])
            store[sha(data)] = store[ref]
            return httpx.Response(201, headers={"Docker-Content-Digest": sha(data)})
        if ref not in store:
            return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        data, media_type = store[ref]
        headers = {"Content-Type": media_type, "Docker-Content-Digest": sha(data)}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=data)

    def _tags(self, request: httpx.Request, repo: str) -> httpx.Response:
        tags = sorted(t for t in self.manifests.get(repo, {}) if ":" not in t)
        if not tags:
            return self._error(404, "NAME_UNKNOWN", "repository name not known to registry")
        n = int(request.url.params.get("n", "1000"))
        last = request.url.params.get("last")
        rest = [t for t in tags if last is None or t > last]
        page = rest[:n]
        headers = {}
        if len(rest) > n:
            headers["Link"] = f'</v2/{repo}/tags/list?n={n}&last={page[-1]}>; rel="next"'
        return httpx.Response(200, headers=headers, json={"name": repo, "tags": page})

    def _blob(self, request: httpx.Request, repo: str, digest: str) -> httpx.Response:
        data = self.blobs.get(repo, {}).get(digest)
        if data is None:
            return self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Content-Length": str(len(data))})
        rng = request.headers.get("range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            part = data[start:]
            return httpx.Response(
                206, headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, content=part
            )
        return httpx.Response(200, content=data)

    def _upload(self, request: httpx.Request, repo: str, session: str) -> httpx.Response:
        if request.method == "POST":
            mount, source = request.url.params.get("mount"), request.url.params.get("from")
            if mount and source and mount in self.blobs.get(source, {}):
                self.blobs.setdefault(repo, {})[mount] = self.blobs[source][mount]
                return httpx.Response(201, headers={"Docker-Content-Digest": mount})
            sid = uuid.uuid4().hex
            self.uploads[sid] = bytearray()
            return httpx.Response(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{sid}?_state=x"})
        if session not in self.uploads:
            return self._error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown")
        buf = self.uploads[session]
        if request.method == "GET":  # upload status, as distribution answers it ("0-0" when empty)
            return httpx.Response(
                204,
                headers={
                    "Location": f"/v2/{repo}/blobs/uploads/{session}?_state=s{len(buf)}",
                    "Range": f"0-{max(len(buf) - 1, 0)}",
                },
            )
        if request.method == "DELETE":
            self.deleted_uploads.append(session)
            del self.uploads[session]
            return httpx.Response(204)
        if request.method == "PATCH":
            body = request.read()  # a streamed PATCH (no Content-Range) appends, like distribution
            if "content-range" in request.headers:
                start = int(request.headers["content-range"].split("-")[0])
                if start != len(buf):
                    return httpx.Response(416)
            buf += body
            return httpx.Response(
                202,
                headers={
                    "Location": f"/v2/{repo}/blobs/uploads/{session}?_state=y",
                    "Range": f"0-{len(buf) - 1}",
                },
            )
        if request.method == "PUT":
            buf += request.content
            digest = request.url.params["digest"]
            if sha(bytes(buf)) != digest:
                return self._error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
            self.blobs.setdefault(repo, {})[digest] = bytes(buf)
            del self.uploads[session]
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        return httpx.Response(405)
