"""An API token's last use: one row per used token, rewritten at most once per resolution."""

from __future__ import annotations

from pathlib import Path

from layerseal.broker import database
from layerseal.broker.store import Store


def test_token_use_is_recorded_once_per_resolution(tmp_path: Path) -> None:
    engine = database.create_db_engine(str(tmp_path / "b.db"))
    database.migrate(engine)
    store = Store(engine)
    try:
        assert store.token_last_uses() == {}
        store.note_token_use("t1", 1000.0, 60.0)
        store.note_token_use("t1", 1059.0, 60.0)  # within the resolution: not written
        store.note_token_use("t2", 1001.0, 60.0)
        assert store.token_last_uses() == {"t1": 1000.0, "t2": 1001.0}
        store.note_token_use("t1", 1060.0, 60.0)
        assert store.token_last_uses()["t1"] == 1060.0
    finally:
        store.dispose()
