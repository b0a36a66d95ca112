"""Fake of modules/cache.py: named sections of the webui's cache (the real one persists cache.json).

Fake only: kept in memory; ``dumps`` counts the ``dump_cache()`` calls that would write the file.
"""

caches = {}
dumps = 0


def dump_cache():
    global dumps
    dumps += 1


def cache(subsection):
    """The dict for ``subsection`` ("hashes", "hashes-addnet", ...), created empty on first use."""
    return caches.setdefault(subsection, {})
