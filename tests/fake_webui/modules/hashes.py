"""Fake of modules/hashes.py: sha256 of checkpoints, cached by title with the file's mtime.

As in the real module, a cached entry older than the file is ignored, and ``--no-hashing`` makes
``sha256()`` answer None for anything not cached.
"""

import hashlib
import os.path

from modules import cache as _cache_module
from modules import shared

dump_cache = _cache_module.dump_cache
cache = _cache_module.cache


def calculate_sha256(filename):
    digest = hashlib.sha256()
    with open(filename, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_from_cache(filename, title, use_addnet_hash=False):
    hashes = cache("hashes-addnet") if use_addnet_hash else cache("hashes")
    try:
        ondisk_mtime = os.path.getmtime(filename)
    except FileNotFoundError:
        return None
    if title not in hashes:
        return None
    cached_sha256 = hashes[title].get("sha256", None)
    cached_mtime = hashes[title].get("mtime", 0)
    if ondisk_mtime > cached_mtime or cached_sha256 is None:
        return None
    return cached_sha256


def sha256(filename, title, use_addnet_hash=False):
    hashes = cache("hashes-addnet") if use_addnet_hash else cache("hashes")
    value = sha256_from_cache(filename, title, use_addnet_hash)
    if value is not None:
        return value
    if shared.cmd_opts.no_hashing:
        return None
    value = calculate_sha256(filename)  # the fake has no addnet variant: dbchar never asks for it
    hashes[title] = {"mtime": os.path.getmtime(filename), "sha256": value}
    dump_cache()
    return value
