"""Durations, the command deadline and the naming of network failures."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest

from layerseal.errors import BadInputError
from layerseal.registry.retry import Deadline, classify_network_error, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1.5s", 1.5)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "--timeout") == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "abc", "5x", "m", "1h-3m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(BadInputError, match="--timeout"):
        parse_duration(text, "--timeout")


def test_format_duration() -> None:
    assert [format_duration(s) for s in (2.5, 45, 90, 3600)] == ["2.5s", "45s", "1m30s", "1h0m0s"]


def test_deadline_counts_down() -> None:
    d = Deadline(30, started=0.0)
    assert d.remaining() < 0  # monotonic time is far past 30 s after 0
    assert Deadline(30).remaining() > 29
    assert Deadline(30).describe() == "the deadline of 30s (--timeout)"


def _wrapped(cause: BaseException) -> Exception:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as outer:
        return outer


def test_classification() -> None:
    refused = classify_network_error(
        _wrapped(ConnectionRefusedError(111, "refused")), "h:5000", "--src-tls-verify"
    )
    assert refused.retriable and "refused" in refused.cause
    dns = classify_network_error(
        _wrapped(socket.gaierror(socket.EAI_NONAME, "Name or service not known")), "h:5000"
    )
    assert not dns.retriable and dns.cause.startswith("name h not resolved")
    again = classify_network_error(_wrapped(socket.gaierror(socket.EAI_AGAIN, "Temporary failure")), "h")
    assert again.retriable
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    wrong.reason = "WRONG_VERSION_NUMBER"
    plain = classify_network_error(_wrapped(wrong), "h", "--dest-tls-verify")
    assert not plain.retriable and plain.fix == "this looks like plain HTTP: use --dest-tls-verify=false"
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    untrusted = classify_network_error(_wrapped(cert), "h", "--src-tls-verify")
    assert not untrusted.retriable and "self-signed certificate" in untrusted.cause
    assert "--src-cert-dir" in untrusted.fix
    unreachable = classify_network_error(_wrapped(OSError(errno.EHOSTUNREACH, "No route to host")), "h")
    assert not unreachable.retriable
    reset = classify_network_error(_wrapped(ConnectionResetError(104, "reset")), "h")
    assert reset.retriable
