"""Fake of modules/hashes.py: sha256 of checkpoints, cached by title (the real cache is cache.json)."""

import hashlib

_cache = {}


def sha256_from_cache(filename, title, use_addnet_hash=False):
    return _cache.get(title)


def sha256(filename, title, use_addnet_hash=False):
    cached = _cache.get(title)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(filename, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    _cache[title] = digest.hexdigest()
    return _cache[title]
