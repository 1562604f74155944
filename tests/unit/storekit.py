"""Helpers for unit tests of the encrypted volume (store.py)."""

from __future__ import annotations

from pathlib import Path

from encfs_pacs import store

STORE_SECRET = store.Secret("passphrase", b"pw")


def small_volume(tmp_path: Path, chunk_size: int = 4096) -> store.Volume:
    """An unlocked volume in tmp_path/b with small chunks, so a few KiB span several."""
    store.create_volume(tmp_path / "b", STORE_SECRET, chunk_size=chunk_size, scrypt_log_n=10)
    return store.unlock(tmp_path / "b", STORE_SECRET)
