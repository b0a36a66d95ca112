"""The offline test kit: tiny models, the tagger double, a fake webui, small images.

Each module holds plain builders plus pytest fixtures; tests/conftest.py imports the fixtures.
"""
