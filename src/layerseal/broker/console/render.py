"""Templates and server-drawn SVG charts of the console (no script, no external assets)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jinja2

CHART_W = 760
CHART_H = 220
_PAD_L, _PAD_B, _PAD_T = 48, 28, 12


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("layerseal.broker.console", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["short"] = lambda text, n=16: "" if not text else (text if len(text) <= n else text[:n] + "…")
    return env


def chunked(parts: Iterator[str], size: int = 64 * 1024) -> Iterator[bytes]:
    """Template output in pieces of about *size* bytes (Jinja yields one per expression)."""
    buf: list[str] = []
    n = 0
    for part in parts:
        buf.append(part)
        n += len(part)
        if n >= size:
            yield "".join(buf).encode()
            buf, n = [], 0
    if buf:
        yield "".join(buf).encode()


def _ticks(top: int) -> list[int]:
    if top <= 0:
        return [0]
    step = max(1, top // 4)
    return list(range(0, top + 1, step))


def activity_chart(buckets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Geometry of a stacked bar chart: releases (bottom) and denials (top) per time bucket."""
    n = max(1, len(buckets))
    inner_w, inner_h = CHART_W - _PAD_L - 8, CHART_H - _PAD_B - _PAD_T
    top = max([int(b["releases"]) + int(b["denials"]) for b in buckets] or [0])
    scale = inner_h / top if top else 0.0
    width = min(inner_w / n, 64.0)  # a few buckets still read as bars, not as blocks
    bars = []
    for i, b in enumerate(buckets):
        x = _PAD_L + i * width
        h_ok = b["releases"] * scale
        h_deny = b["denials"] * scale
        bars.append(
            {
                "x": round(x + 1, 1),
                "w": round(max(1.0, width - 2), 1),
                "y_ok": round(_PAD_T + inner_h - h_ok, 1),
                "h_ok": round(h_ok, 1),
                "y_deny": round(_PAD_T + inner_h - h_ok - h_deny, 1),
                "h_deny": round(h_deny, 1),
                "title": f"{b['start']}: {b['releases']} released, {b['denials']} denied",
                "label": b["start"][11:19] if i in (0, n - 1) or i == n // 2 else "",
            }
        )
    ticks = [{"y": round(_PAD_T + inner_h - t * scale, 1), "v": t} for t in _ticks(top)]
    return {
        "w": CHART_W,
        "h": CHART_H,
        "bars": bars,
        "ticks": ticks,
        "x0": _PAD_L,
        "base": _PAD_T + inner_h,
        "right": CHART_W - 8,
    }


def latency_chart(hist: Mapping[str, Any]) -> dict[str, Any]:
    """Geometry of a latency histogram (requests per upper bound)."""
    buckets = list(hist["buckets"])
    n = len(buckets)
    inner_w, inner_h = CHART_W - _PAD_L - 8, 160 - _PAD_B - _PAD_T
    top = max([int(b["count"]) for b in buckets] or [0])
    scale = inner_h / top if top else 0.0
    width = inner_w / n
    bars = []
    for i, b in enumerate(buckets):
        h = b["count"] * scale
        bound = "+Inf" if b["le"] is None else f"{b['le'] * 1000:g}ms"
        bars.append(
            {
                "x": round(_PAD_L + i * width + 2, 1),
                "w": round(width - 4, 1),
                "y": round(_PAD_T + inner_h - h, 1),
                "h": round(h, 1),
                "label": bound,
                "title": f"<= {bound}: {b['count']}",
            }
        )
    return {"w": CHART_W, "h": 160, "bars": bars, "base": _PAD_T + inner_h, "x0": _PAD_L, "hist": hist}
