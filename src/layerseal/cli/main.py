"""The ``layerseal`` command: argument parsing and error printing only.

Subcommands live in sibling modules; each defines ``register(subparsers)`` which adds
its parsers and sets ``func`` to a callable taking the parsed namespace and returning
an exit status.  Modules are discovered, so adding a command never edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from collections.abc import Sequence

import layerseal
import layerseal.cli
from layerseal.cli._allocator import tune_allocator
from layerseal.cli._environment import epilog as environment_epilog
from layerseal.cli._exits import broken_pipe, describe_os_error, exit_code_of, os_error_status
from layerseal.errors import LayersealError

# Which module defines a command, so that a run imports only that one (start-up time
# matters for per-layer keyprovider calls).  A command missing here still works: all
# modules are then imported.
_COMMAND_MODULES = {
    "copy": "copy",
    "inspect": "copy",
    "layer": "layer",
    "keys": "keys",
    "pull": "engine",
    "run": "engine",
    "store": "store",
    "broker": "broker",
    "tee": "tee",
    "keyprovider": "keyprovider",
    "containerd": "containerd",
}


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerseal",
        description="Keep container images confidential until they run in an attested enclave.",
        epilog=environment_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"layerseal {layerseal.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    only = _COMMAND_MODULES.get(_command_of(argv) or "") if argv is not None else None
    for info in sorted(pkgutil.iter_modules(layerseal.cli.__path__), key=lambda i: i.name):
        if info.name in ("main", "common") or info.name.startswith("_"):
            continue
        if only is not None and info.name != only:
            continue
        module = importlib.import_module(f"layerseal.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_allocator()
    parser = build_parser(argv)
    args, extras = parser.parse_known_args(argv)
    # commands shaped like "SRC PATH... [options] DST" collect positionals given after options
    collect = getattr(args, "collect_positionals", None)
    if extras and collect is not None and not any(e.startswith("-") for e in extras):
        getattr(args, collect).extend(extras)
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        status = args.func(args)
        sys.stdout.flush()  # a reader that went away is noticed here, not at interpreter exit
    except BrokenPipeError:
        return broken_pipe()
    except LayersealError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"layerseal: error: {exc}", file=sys.stderr)
        # commands whose own status is another program's (run) fail with codes that cannot collide
        own_failure = getattr(args, "failure_status", None)
        if own_failure is not None:
            return int(getattr(exc, "container_status", own_failure))
        return exit_code_of(exc)
    except OSError as exc:
        # the local system refused (no space, a file missing or unreadable): one line, not a traceback
        if args.verbose:
            traceback.print_exc()
        print(f"layerseal: error: {describe_os_error(exc)}", file=sys.stderr)
        return int(getattr(args, "failure_status", None) or os_error_status(exc))
    except KeyboardInterrupt:
        print("layerseal: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
