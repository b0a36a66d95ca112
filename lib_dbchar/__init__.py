"""dbchar: from ~20 pictures of a character to a Dreambooth checkpoint, and onto any model.

The core package. It imports neither the webui (`modules`) nor gradio, and importing it does no
work: no downloads, no folders, no torch. Long jobs take `progress` and `should_stop` callbacks
(see `lib_dbchar.jobs`); the host seam (`lib_dbchar.host`) maps them onto whichever program runs us.
"""

from lib_dbchar.version import __version__

__all__ = ["__version__"]
