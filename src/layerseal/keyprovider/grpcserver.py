"""``keyprovider.KeyProviderService`` over gRPC (WrapKey, UnWrapKey) without generated code.

Each message is one ``bytes`` field carrying the keyprovider JSON (see ``pbcodec``), so
generic handlers with hand-written (de)serialisers suffice.  ocicrypt dials the server
without TLS: the private options cross this channel in the clear, so bind it to
loopback (or a socket only the enclave reaches).
"""

from __future__ import annotations

import sys
from concurrent import futures
from typing import Any

import grpc

from layerseal.errors import BadInputError, DeniedError, IntegrityError, LayersealError, NotFoundError
from layerseal.keyprovider import pbcodec
from layerseal.keyprovider.provider import Provider

SERVICE = "keyprovider.KeyProviderService"


def _status(exc: LayersealError) -> grpc.StatusCode:
    from layerseal.broker.problems import UnauthenticatedError

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


def build_server(provider: Provider, address: str, *, workers: int = 8) -> tuple[grpc.Server, int]:
    """A started server on *address* (``HOST:PORT``, port 0 = any); returns it and the bound port."""
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
