"""The one place the version lives (pyproject reads it, the UI and the API show it)."""

__version__ = "0.1.0"
