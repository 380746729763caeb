"""``keyprovider.KeyProviderService`` over gRPC (WrapKey, UnWrapKey) without generated code.

Each message is one ``bytes`` field carrying the keyprovider JSON (see ``pbcodec``), so
generic handlers with hand-written (de)serialisers suffice.  The private options cross
this channel: without TLS bind it to loopback (or a socket only the enclave reaches).
With :class:`ServerTls` it serves TLS, which ocicrypt >= 1.3 dials when its config has
``"grpc-tls"``; with a client CA it requires client certificates (mutual TLS), the way
to keep other hosts from having layer keys unwrapped.
"""

from __future__ import annotations

import sys
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from layerseal.errors import BadInputError, DeniedError, IntegrityError, LayersealError, NotFoundError
from layerseal.keyprovider import pbcodec
from layerseal.keyprovider.provider import Provider

SERVICE = "keyprovider.KeyProviderService"


def _status(exc: LayersealError) -> grpc.StatusCode:
    from layerseal.kbs.problems import UnauthenticatedError

    if isinstance(exc, UnauthenticatedError):
        return grpc.StatusCode.UNAUTHENTICATED
    if isinstance(exc, DeniedError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, BadInputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, IntegrityError):
        return grpc.StatusCode.DATA_LOSS
    return grpc.StatusCode.UNAVAILABLE


def _handler(provider: Provider, method: str) -> Any:
    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return provider.handle(request)
        except LayersealError as exc:
            context.abort(_status(exc), str(exc))
        except Exception as exc:
            # a bug: say which kind without details that could carry key material
            print(f"layerseal keyprovider: {method}: internal error {type(exc).__name__}", file=sys.stderr)
            context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error ({type(exc).__name__})")
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    return grpc.unary_unary_rpc_method_handler(
        call,
        request_deserializer=pbcodec.decode_message,
        response_serializer=pbcodec.encode_message,
    )


@dataclass(frozen=True)
class ServerTls:
    """PEM files: the server's certificate chain and key; *client_ca* makes it mutual TLS."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: str, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise BadInputError(
                    f"{what} {path}: expected a readable PEM file, seen {exc.strerror}"
                ) from exc

        cert, key = read(self.cert_file, "--tls-cert"), read(self.key_file, "--tls-key")
        for data, what, path in ((cert, "--tls-cert", self.cert_file), (key, "--tls-key", self.key_file)):
            if b"-----BEGIN " not in data:
                raise BadInputError(f"{what} {path}: expected PEM, seen other data")
        client_ca = read(self.client_ca_file, "--tls-client-ca") if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


def build_server(
    provider: Provider, address: str, *, workers: int = 8, tls: ServerTls | None = None
) -> tuple[grpc.Server, int]:
    """A started server on *address* (``HOST:PORT``, port 0 = any); returns it and the bound port."""
    credentials = tls.credentials() if tls is not None else None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {"WrapKey": _handler(provider, "WrapKey"), "UnWrapKey": _handler(provider, "UnWrapKey")},
            ),
        )
    )
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise BadInputError(
            f"--grpc {address}: expected a bindable HOST:PORT, seen a failure to bind"
        ) from exc
    if port == 0:
        raise BadInputError(f"--grpc {address}: expected a bindable HOST:PORT, seen a failure to bind")
    server.start()
    return server, port


def call(channel: grpc.Channel, method: str, request: bytes, timeout: float = 30.0) -> bytes:
    """One client call (``WrapKey`` or ``UnWrapKey``) with the raw keyprovider JSON."""
    stub = channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=pbcodec.encode_message,
        response_deserializer=pbcodec.decode_message,
    )
    reply: bytes = stub(request, timeout=timeout)
    return reply
