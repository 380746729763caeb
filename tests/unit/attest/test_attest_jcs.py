"""RFC 8785 canonicalisation and the RCAR report-data binding."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerseal.attest.binding import report_data, runtime_data
from layerseal.errors import BadInputError
from layerseal.wire.jcs import canonicalize


def test_rfc8785_sorting_by_utf16_and_escapes() -> None:
    # RFC 8785 3.2.3: keys sort by UTF-16 code units, so U+1F600 (surrogates D83D..) sorts before U+FB33
    value = {
        "\u20ac": "Euro",
        "\r": "CR",
        "\ufb33": "Hebrew",
        "1": "One",
        "\U0001f600": "Smiley",
        "\u0080": "Ctl",
    }
    out = canonicalize(value).decode()
    keys = [k for k in json.loads(out)]
    assert keys == ["\r", "1", "\u0080", "\u20ac", "\U0001f600", "\ufb33"]
    assert canonicalize({"a": '\u0001\n"\\/'}) == b'{"a":"\\u0001\\n\\"\\\\/"}'


def test_numbers_literals_and_nesting() -> None:
    assert (
        canonicalize({"b": [True, False, None, 1, -2, 3.0], "a": {}})
        == b'{"a":{},"b":[true,false,null,1,-2,3]}'
    )
    with pytest.raises(BadInputError, match="integral"):
        canonicalize({"x": 1.5})
    with pytest.raises(BadInputError, match="2\\*\\*53"):
        canonicalize(2**60)
    with pytest.raises(BadInputError):
        canonicalize({1: "non-string key"})


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_canonical_form_round_trips_and_is_stable(value: object) -> None:
    out = canonicalize(value)
    assert json.loads(out) == value
    assert canonicalize(json.loads(out)) == out


def test_report_data_is_sha384_of_jcs_padded_to_64() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "BBBB", "alg": "ECDH-ES+A256KW"}
    rd = report_data("bm9uY2U=", jwk)
    expected = hashlib.sha384(
        b'{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":'
        b'{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAAA","y":"BBBB"}}'
    ).digest()
    assert rd == expected + b"\0" * 16
    assert runtime_data("n", jwk)["tee-pubkey"] == jwk
    assert report_data("bm9uY2U=", {**jwk, "x": "AAAB"}) != rd
    assert report_data("bm9uY2V=", jwk) != rd
