"""``make bench``: run every benchmark in turn (each prints its table and writes JSON)."""

from __future__ import annotations

import compileall
import importlib
import sys
from pathlib import Path

BENCHMARKS = [
    "crypto_throughput",
    "copy_oci",
    "copy_registry",
    "pull_unpack",
    "add_layer",
    "broker_load",
    "keyprovider",
    "containerd_decode",
    "attest_verify",
    "console_render",
    "startup",
]


def main() -> int:
    # layerseal is measured as installed, with bytecode (pip compiles on install; an editable
    # checkout under PYTHONDONTWRITEBYTECODE=1 would recompile ~30 modules per command)
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "src", quiet=2)
    wanted = sys.argv[1:] or BENCHMARKS
    for name in wanted:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            print(f"[{name}] not available: {exc}")
            continue
        print(f"\n=== {name} ===")
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
