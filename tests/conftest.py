"""Fixtures shared by every test module come from the kit (tests/kit/*.py)."""

from tests.kit.models import *  # noqa: F403
from tests.kit.tagger import *  # noqa: F403
from tests.kit.webui import *  # noqa: F403
from tests.kit.images import *  # noqa: F403
