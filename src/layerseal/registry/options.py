"""Options shared by the registry client and the ``docker://`` source and destination."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from layerseal.errors import MisuseError
from layerseal.image.transport import CHUNK_SIZE
from layerseal.registry.retry import Deadline, RetryPolicy


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach and authenticate to a registry.

    ``tls_verify=False`` skips certificate checks and lets the client fall back to plain
    HTTP (like skopeo's ``--tls-verify=false``); ``ca_file`` adds a CA bundle to trust;
    ``creds`` is ``USER:PASSWORD``; ``authfile`` replaces the default auth files.
    """

    tls_verify: bool = True
    ca_file: str | None = None
    creds: str | None = field(default=None, repr=False)
    authfile: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: connection pool size; the copy pipeline transfers several layers at once
    max_connections: int = 16
    #: seconds for connect / read / write of one network operation
    timeout: float = 60.0
    #: seconds to establish a connection: a registry that is there answers well within it
    connect_timeout: float = 15.0
    #: the whole command's time limit (``--timeout``); no retry waits past it
    deadline: Deadline | None = None
    #: ``src`` / ``dest``: which command-line flags the error hints name (``--src-tls-verify``)
    side: str | None = None
    #: blobs up to this size go up in a single PUT (memory held per upload)
    upload_chunk_size: int = CHUNK_SIZE
    #: None: larger blobs go in one streamed PATCH (fastest); N: in PATCHes of N bytes with
    #: ``Content-Range`` (for registries and proxies that cap request bodies), each resumed
    #: after a failure from the offset the registry reports; about 2N bytes are held per upload
    upload_chunk_limit: int | None = None
    user_agent: str = "layerseal/0.1"
    #: tests put an ``httpx.MockTransport`` here
    transport: httpx.BaseTransport | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("upload_chunk_size", "upload_chunk_limit", "max_connections"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise MisuseError(f"RegistryOptions.{name}: expected a positive integer, seen {value!r}")
