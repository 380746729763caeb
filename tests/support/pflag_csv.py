"""How skopeo, podman and buildah read ``--encryption-key``/``--decryption-key`` (test support).

They are pflag ``StringSlice`` flags: pflag's ``readAsCSV`` hands the value to Go's
``encoding/csv`` reader with its defaults (``Comma=','``, no lazy quotes, no leading-space
trimming) and keeps the first record.  This is that reader, rule for rule, so a test can
run documented command lines through the same split.  ``CsvError`` carries Go's messages.
"""

from __future__ import annotations


class CsvError(ValueError):
    """Go's ``csv.ParseError`` (skopeo prints it as ``invalid argument ... for "--flag" flag``)."""


def _lines(value: str) -> list[str]:
    """Lines with their newline, ``\\r\\n`` folded to ``\\n`` as Go's readLine does."""
    out: list[str] = []
    start = 0
    while start < len(value):
        end = value.find("\n", start)
        line = value[start:] if end < 0 else value[start : end + 1]
        start += len(line)
        if line.endswith("\r\n"):
            line = line[:-2] + "\n"
        out.append(line)
    return out


def read_record(value: str) -> list[str]:
    """The first CSV record of *value*, as ``encoding/csv.Reader.Read`` returns it."""
    lines = _lines(value)
    # empty lines are skipped before a record
    while lines and lines[0] == "\n":
        lines.pop(0)
    if not lines:
        return []
    line_no = 1
    line = lines.pop(0)
    offset = 0  # of *line* in the physical line, for Go's 1-based column numbers
    fields: list[str] = []
    while True:
        if not line.startswith('"'):
            end = line.find(",")
            field = line if end < 0 else line[:end]
            stripped = field[:-1] if field.endswith("\n") else field
            if '"' in stripped:
                col = offset + stripped.index('"') + 1
                raise CsvError(f'parse error on line {line_no}, column {col}: bare " in non-quoted-field')
            fields.append(stripped)
            if end < 0:
                return fields
            line = line[end + 1 :]
            offset += end + 1
            continue
        # quoted field
        body = line[1:]
        parts: list[str] = []
        while True:
            q = body.find('"')
            if q >= 0:
                parts.append(body[:q])
                rest = body[q + 1 :]
                if rest.startswith('"'):
                    parts.append('"')
                    body = rest[1:]
                    continue
                if rest.startswith(","):
                    offset += len(line) - len(rest) + 1
                    line = rest[1:]
                    fields.append("".join(parts))
                    break
                if rest in ("", "\n"):
                    fields.append("".join(parts))
                    return fields
                raise CsvError(f'parse error on line {line_no}: extraneous or missing " in quoted-field')
            if body and lines:  # the quoted field goes on in the next line
                parts.append(body)
                body = lines.pop(0)
                line_no += 1
                continue
            raise CsvError(f'parse error on line {line_no}: extraneous or missing " in quoted-field')


def string_slice(values: list[str]) -> list[str]:
    """The slice a ``StringSlice`` flag holds after being given *values* (repeats append)."""
    out: list[str] = []
    for v in values:
        out.extend(read_record(v) if v else [])
    return out
