"""The ``layerseal`` command line (thin: parse, call one library function, print)."""

import sys

# httpx imports its own command-line client (click, pygments, rich: 40 ms of start-up)
# whenever those are installed, and they are (uvicorn and rich bring them).  A None entry
# makes that one import fail, which httpx expects and handles; layerseal's commands never
# run httpx's client.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
