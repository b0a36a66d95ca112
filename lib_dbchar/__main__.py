"""``python -m lib_dbchar``: the standalone entry point (see ``lib_dbchar.cli``)."""

from lib_dbchar.cli import main

raise SystemExit(main())
