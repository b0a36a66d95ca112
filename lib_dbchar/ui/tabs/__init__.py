"""The five sub-tabs, in workflow order; each module has ``TITLE`` and ``render(ctx)``."""
