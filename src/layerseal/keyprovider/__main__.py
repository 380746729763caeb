"""``python -m layerseal.keyprovider``: the keyprovider without loading the rest of the CLI."""

from __future__ import annotations

import sys

from layerseal.cli.keyprovider import main

if __name__ == "__main__":
    sys.exit(main())
