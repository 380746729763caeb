"""Image JSON parsing: a depth limit, lone surrogates and non-finite numbers are bad input."""

from __future__ import annotations

import json

import pytest

from layerseal.errors import BadInputError
from layerseal.image import jsonutil as J
from layerseal.image.encryption import PublicOptions
from layerseal.image.manifest import Index, Manifest
from layerseal.wire.jsonload import object_or_none


def nested(depth: int, opener: str = "[") -> str:
    """A JSON value *depth* containers deep."""
    if opener == "[":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def test_depth_limit_is_exact_and_ignores_brackets_in_strings() -> None:
    assert J.loads_object('{"a":' + nested(J.MAX_DEPTH - 1) + "}", "doc")
    with pytest.raises(BadInputError, match=r"^doc: expected JSON nested at most 64 deep, seen 65 levels$"):
        J.loads_object('{"a":' + nested(J.MAX_DEPTH) + "}", "doc")
    text = json.dumps({"s": "[[[[{{{{" * 100, "t": '\\"[' * 100, "k": [1]})
    assert J.loads_object(text, "doc")["k"] == [1]


@pytest.mark.parametrize("depth", [1000, 100_000])
@pytest.mark.parametrize("opener", ["[", "{"])
def test_deep_documents_are_bad_input_not_recursion_errors(depth: int, opener: str) -> None:
    with pytest.raises(BadInputError, match=r"^manifest: expected JSON nested at most 64 deep"):
        Manifest.from_bytes(('{"x":' + nested(depth, opener) + "}").encode())
    with pytest.raises(BadInputError, match=r"^index: expected JSON nested at most 64 deep"):
        Index.from_bytes(nested(depth, opener).encode())


@pytest.mark.parametrize(
    "text",
    [
        r'{"a":"\ud800"}',
        r'{"a":"x\udfffy"}',
        r'{"\ud800":1}',
        r'{"a":["\ud83d"]}',  # a high surrogate without its low half
        r'{"a":"\udc00\ud800"}',  # halves in the wrong order
    ],
)
def test_lone_surrogate_escapes_are_bad_input(text: str) -> None:
    with pytest.raises(
        BadInputError, match=r"^manifest: expected strings of Unicode text, seen a lone UTF-16"
    ):
        J.loads_object(text.encode(), "manifest")


def test_surrogate_pairs_and_escaped_backslashes_are_text() -> None:
    assert J.loads_object(rb'{"a":"\ud83d\ude00"}', "doc") == {"a": "\U0001f600"}
    assert J.loads_object(rb'{"a":"\\ud800"}', "doc") == {"a": "\\ud800"}
    with pytest.raises(BadInputError, match="lone surrogate at character 6"):
        J.loads('{"a":"\ud800"}', "doc")  # a str that already holds one


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'{"size":1e400}', r"expected JSON, seen invalid JSON \(number 1e400 out of range\)"),
        (b'{"size":-1e999}', r"number -1e999 out of range"),
        (b'{"size":NaN}', r"non-standard JSON constant NaN"),
        (b'{"a":"\xff"}', r"expected UTF-8 JSON, seen an invalid byte at offset 6"),
        (b'{"a":"\xed\xa0\x80"}', r"expected UTF-8 JSON, seen an invalid byte at offset 6"),
        (b"\xef\xbb\xbf{}", r"expected JSON, seen invalid JSON"),
    ],
)
def test_numbers_beyond_a_double_and_bad_text_are_bad_input(text: bytes, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        J.loads_object(text, "config")


def test_annotation_json_is_parsed_with_the_same_limits() -> None:
    import base64

    deep = base64.b64encode(
        ('{"cipher":"AES_256_CTR_HMAC_SHA256","x":' + nested(1000) + "}").encode()
    ).decode()
    with pytest.raises(BadInputError, match=r"^pubopts: expected JSON nested at most 64 deep"):
        PublicOptions.from_annotation(deep)
    lone = base64.b64encode(rb'{"cipher":"AES_256_CTR_HMAC_SHA256\ud800"}').decode()
    with pytest.raises(BadInputError, match=r"^pubopts: expected strings of Unicode text"):
        PublicOptions.from_annotation(lone)


def test_config_history_entries_must_be_objects() -> None:
    from layerseal.image.config import ImageConfig

    with pytest.raises(BadInputError, match=r"^image config: history\[1\]: expected an object, seen float$"):
        ImageConfig.from_bytes(b'{"history":[{"created_by":"x"},1.0]}')


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (b'{"detail":"x"}', {"detail": "x"}),
        ('{"level":"error"}', {"level": "error"}),
        (b"[1]", None),
        (b"not json", None),
        (b"", None),
        (b"\xff{}", None),
        (nested(J.MAX_DEPTH + 1, "{"), None),  # too deep: no RecursionError, just no object
    ],
)
def test_object_or_none_reads_details_without_refusing(text: bytes | str, found: object) -> None:
    assert object_or_none(text) == found
