"""Alembic migration environment of the broker database (run programmatically at startup)."""
