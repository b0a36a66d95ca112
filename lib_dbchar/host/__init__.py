"""The host seam: the little dbchar needs from whichever program runs it.

``base.Host`` is the interface; ``standalone.StandaloneHost`` serves ``python -m lib_dbchar``;
``webui.WebuiHost`` (the only module that imports the webui's ``modules``) serves A1111/Forge.
Nothing in this package's ``__init__`` imports either implementation.
"""

from lib_dbchar.host.base import CheckpointRef, Host

__all__ = ["CheckpointRef", "Host"]
