"""Command groups: ``layerseal NAME ACTION ...`` parsers, built the same way for every group.

Kept free of imports: the per-layer commands (``containerd decode``) build their parser with it.
"""

from __future__ import annotations

from typing import Any


def command_group(
    sub: Any, name: str, help_text: str, *, dest: str | None = None, metavar: str = "ACTION"
) -> Any:
    """Add the command *name* to *sub* and return its subparsers, one of which must be chosen;
    the chosen one is stored in ``args.<dest>`` (default ``<name>_command``)."""
    group = sub.add_parser(name, help=help_text)
    actions = group.add_subparsers(dest=dest or f"{name.replace('-', '_')}_command", metavar=metavar)
    actions.required = True
    return actions
