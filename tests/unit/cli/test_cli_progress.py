"""Progress bars appear only on a terminal and never with --quiet."""

from __future__ import annotations

import io
import sys

import pytest

from layerseal.cli.common import RichProgress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("tty", "wanted", "shown"), [(True, True, True), (False, True, False), (True, False, False)]
)
def test_bars_only_on_a_terminal_and_not_quiet(
    monkeypatch: pytest.MonkeyPatch, tty: bool, wanted: bool, shown: bool
) -> None:
    monkeypatch.setattr(sys, "stderr", _Tty() if tty else io.StringIO())
    progress = RichProgress(wanted)
    assert progress.enabled is shown
    with progress:  # the calls the copy pipeline makes work either way
        progress.start("0", "copy", 10)
        progress.advance("0", 10)
        progress.finish("0")
