"""Test helpers shared by unit and integration tests (not a test package)."""
