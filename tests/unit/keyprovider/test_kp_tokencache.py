"""The token cache: 0600 files in a 0700 directory, expiry margin, distrust of loose or damaged entries."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from layerseal.errors import BadInputError, DeniedError
from layerseal.keyprovider.tokencache import (
    MARGIN,
    CachedToken,
    TokenCache,
    cache_key,
    default_directory,
    token_exp,
)


def jwt(claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFUzI1NiJ9.{body}.c2ln"


def entry(exp: float = 1000.0) -> CachedToken:
    return CachedToken(jwt({"exp": exp}), exp, {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}, "ZA")


def test_token_exp() -> None:
    assert token_exp(jwt({"exp": 1234})) == 1234.0
    with pytest.raises(BadInputError, match="3 parts"):
        token_exp("a.b")
    with pytest.raises(BadInputError, match="numeric 'exp'"):
        token_exp(jwt({"exp": "soon"}))
    with pytest.raises(BadInputError, match="numeric 'exp'"):
        token_exp(jwt({}))


def test_store_load_with_private_modes(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "c")
    cache.store("k", entry())
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o700
    assert cache.path("k").stat().st_mode & 0o777 == 0o600
    loaded = cache.load("k", now=0)
    assert loaded == entry()
    assert "redacted" in repr(loaded) and "eyJ" not in repr(loaded)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["token-k.json"]  # no temp files left


def test_expiry_margin(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path)
    cache.store("k", entry(exp=1000))
    assert cache.load("k", now=1000 - MARGIN - 1) is not None
    assert cache.load("k", now=1000 - MARGIN) is None


def test_loose_or_damaged_entries_are_not_used(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "c")
    cache.store("k", entry())
    cache.path("k").chmod(0o644)
    assert cache.load("k", now=0) is None
    cache.path("k").chmod(0o600)
    cache.path("k").write_text("{not json")
    assert cache.load("k", now=0) is None
    cache.path("k").write_text(
        json.dumps({"version": 99, "token": "t", "exp": 1e12, "tee_pubkey": {}, "private_d": "d"})
    )
    assert cache.load("k", now=0) is None
    assert cache.load("missing", now=0) is None
    cache.store("k", entry())  # overwrites with a fresh 0600 file
    assert cache.load("k", now=0) is not None
    cache.drop("k")
    assert cache.load("k", now=0) is None


def test_loose_directory_is_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    with pytest.raises(DeniedError, match="expected a directory of mode 0700"):
        TokenCache(loose).store("k", entry())


def test_lock_is_reentrant_across_entries(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "c")
    with cache.locked("a"), cache.locked("b"):
        cache.store("a", entry())
    assert cache.load("a", now=0) is not None


def test_keys_and_default_directory() -> None:
    assert cache_key("http://a", "sim", "/p") != cache_key("http://b", "sim", "/p")
    assert cache_key("http://a", "sim", "/p") != cache_key("http://a", "sim", "/q")
    assert default_directory({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/layerseal")
    assert default_directory({}).name == f"layerseal-{os.getuid()}"
