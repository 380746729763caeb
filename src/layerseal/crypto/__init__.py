"""Streaming layer ciphers, key wrapping schemes and key loading (pure: no I/O)."""
