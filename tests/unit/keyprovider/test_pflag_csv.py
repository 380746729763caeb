"""The test emulation of pflag's CSV split (Go encoding/csv defaults), rule by rule."""

from __future__ import annotations

import pytest

from support.pflag_csv import CsvError, read_record, string_slice


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        ("a", ["a"]),
        ("a,b,,c", ["a", "b", "", "c"]),
        ("a,", ["a", ""]),
        (" a , b", [" a ", " b"]),  # no trimming
        ('"a,b",c', ["a,b", "c"]),
        ('"say ""hi""",x', ['say "hi"', "x"]),
        ('""', [""]),
        ("a\nb,c", ["a"]),  # only the first record
        ('"a\nb",c', ["a\nb", "c"]),  # a quoted newline stays
        ("\n\na,b", ["a", "b"]),  # empty lines before a record are skipped
        ("a;b=c;d", ["a;b=c;d"]),
        ("a\r\n", ["a"]),
    ],
)
def test_records(value: str, fields: list[str]) -> None:
    assert read_record(value) == fields


@pytest.mark.parametrize("value", ['a"b', 'x,y"z', '"abc"d', '"open'])
def test_quote_errors(value: str) -> None:
    with pytest.raises(CsvError):
        read_record(value)


def test_string_slice_appends_repeats() -> None:
    assert string_slice(["a,b", "c", ""]) == ["a", "b", "c"]
