"""The extension-wide settings (the webui's Settings > dbchar section, or the standalone CLI flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lib_dbchar.config import setting


@dataclass(frozen=True)
class Settings:
    projects_dir: str = setting(
        "",
        label="Projects folder",
        help="One sub-folder per character: dataset, captions, concept, runs. "
        "Empty: 'dbchar' inside the webui's data folder (standalone: ~/dbchar).",
    )
    tagger_cache_dir: str = setting(
        "",
        label="Tagger model cache",
        help="Where WD14 tagger models are downloaded once and kept. Empty: the Hugging Face cache.",
    )

    def resolved_projects_dir(self, default: Path) -> Path:
        """The projects folder to use: the setting, else ``default`` (the host's choice)."""
        return Path(self.projects_dir).expanduser() if self.projects_dir.strip() else Path(default)


# Field name -> the webui's option key. One table, checked against the dataclass by a test, so a
# renamed field cannot silently lose the value users saved in config.json.
WEBUI_OPTION_KEYS: dict[str, str] = {
    "projects_dir": "dbchar_projects_dir",
    "tagger_cache_dir": "dbchar_tagger_cache_dir",
}
