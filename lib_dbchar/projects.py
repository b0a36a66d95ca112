"""Project folders: one per character.

    <projects>/<name>/
        project.json    name, created, dbchar version
        dataset/        prepared images (PNG) with their captions (same stem, .txt)
        classes/        class (regularisation) images, one folder per concept
        concept.json    the concept(s) of this character
        runs/<run>/     one training run: working model, samples, logging, checkpoints' record

Folders are created only when a project is created or a job writes into them, never on import.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from lib_dbchar.errors import DbcharError
from lib_dbchar.paths import atomic_write, child_path, new_path, safe_name
from lib_dbchar.version import __version__

PROJECT_FILE = "project.json"


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def classes_dir(self) -> Path:
        return self.root / "classes"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def concept_file(self) -> Path:
        return self.root / "concept.json"

    def run_dir(self, run_name: str) -> Path:
        """The folder of a run; the name is sanitised and kept inside ``runs/``."""
        return child_path(self.runs_dir, run_name, what="run name")


def create_project(base: Path, name: str) -> Project:
    """Create ``base/<safe name>`` with its sub-folders.

    Raises:
        NameRejected: the name cannot be a folder name.
        TargetExists: a project (or any file) of that name exists; open it instead.
    """
    root = new_path(Path(base), name, what="project name")
    project = Project(root)
    for folder in (project.dataset_dir, project.classes_dir, project.runs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "dbchar": __version__}
    atomic_write(root / PROJECT_FILE, json.dumps(record, indent=2) + "\n")
    return project


def open_project(base: Path, name: str) -> Project:
    root = Path(base) / safe_name(name, what="project name")
    if not (root / PROJECT_FILE).is_file():
        raise DbcharError(f"No project at {root}; create it first (or pick one of the listed projects).")
    return Project(root)


def list_projects(base: Path) -> list[str]:
    """Names of the projects under ``base`` (folders holding a project.json), sorted."""
    base = Path(base)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / PROJECT_FILE).is_file())
