"""Structured JSON logs, one object a line.  Callers pass facts in ``extra={"fields": {...}}``;
nothing secret (keys, tokens, nonces, optsdata) is ever put there."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            obj.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            obj["error"] = record.exc_info[0].__name__
        return json.dumps(obj, default=str, separators=(",", ":"))


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("layerseal")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
