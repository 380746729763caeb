"""Process-level start-up and allocator tuning of the CLI: glibc accepts it, httpx is lighter."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from layerseal.cli._allocator import tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_thresholds_and_a_second_call() -> None:
    assert tune_allocator() is True
    assert tune_allocator() is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tuned_process_faults_less_when_churning_megabyte_buffers() -> None:
    # the effect the module exists for: freed MiB-sized buffers are reused, not unmapped
    # two threads, each holding a few buffers of 256 KiB .. 2 MiB, as a transfer does
    code = (
        "import resource, sys, threading\n"
        "from layerseal.cli._allocator import tune_allocator\n"
        "if sys.argv[1] == 'tuned': tune_allocator()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "def work(seed):\n"
        "    ring = []\n"
        "    for i in range(400):\n"
        "        ring.append(bytes(((i * 7919 + seed) % 8 + 1) * 256 * 1024))\n"
        "        if len(ring) > 3: ring.pop(0)\n"
        "ts = [threading.Thread(target=work, args=(s,)) for s in range(2)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {}
    for mode in ("plain", "tuned"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(out.stdout)
    assert faults["tuned"] * 4 < faults["plain"], faults


def test_mallopt_is_found_where_the_module_looks() -> None:
    if platform.libc_ver()[0] == "glibc":
        assert hasattr(ctypes.CDLL(None), "mallopt")


def test_cli_blocks_only_httpx_own_command_line_client() -> None:
    # start-up: importing the CLI package keeps httpx from importing click, pygments and rich
    code = (
        "import sys, layerseal.cli, httpx\n"
        "print(sorted(m for m in ('click', 'pygments', 'rich') if m in sys.modules))\n"
        "print(httpx.Client is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True"]
