"""``make bench``: run every benchmark in turn (each prints its table and writes JSON)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "crypto_throughput",
    "copy_oci",
    "copy_registry",
    "pull_unpack",
    "add_layer",
    "broker_load",
    "keyprovider",
    "attest_verify",
]


def main() -> int:
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
