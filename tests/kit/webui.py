"""Fixtures for webui (filled in by its issue)."""
