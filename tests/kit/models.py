"""Fixtures for models (filled in by its issue)."""
