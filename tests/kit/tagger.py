"""Fixtures for tagger (filled in by its issue)."""
