"""The anime face detector double (``model.onnx``, built by ``build.py``; see README.md) and helpers.

``lay_out_face_detector(hub_cache)`` puts the double into a Hugging Face hub cache where
``hf_hub_download("deepghs/anime_face_detection", "face_detect_v1.4_n/model.onnx", revision=<pinned>)``
finds it offline, i.e. where dbchar's ``load_face_detector`` looks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FACE_DOUBLE_DIR = Path(__file__).resolve().parent
FACE_DOUBLE_MODEL = FACE_DOUBLE_DIR / "model.onnx"
FACE_DOUBLE_SCORE = 0.9  # anchor 0's score when a magenta patch is present


def lay_out_face_detector(hub_cache: Path, repo_id: str, filename: str, revision: str) -> Path:
    """Copy the double into ``hub_cache`` as ``repo_id``'s ``filename`` at commit ``revision``.

    The hub cache layout: ``models--Org--Name/snapshots/<revision>/<filename>`` (a plain copy, as on
    systems without symlinks) and ``refs/main`` pointing at the revision. ``filename`` may contain
    folders (``face_detect_v1.4_n/model.onnx``).

    Returns:
        The path of the copied model.
    """
    repo_dir = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    target = repo_dir / "snapshots" / revision / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FACE_DOUBLE_MODEL, target)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision, encoding="utf-8")
    return target
