"""Which WD14 models dbchar knows, and where their two files come from.

A model is ``model.onnx`` + ``selected_tags.csv`` either from a local folder the user names, or from
its Hugging Face repository at a **pinned commit**, downloaded once into the hub cache (or the
folder of the ``tagger_cache_dir`` setting) and read from there afterwards without any network.

Pinned revisions: the commit hashes below were found in two independent public sources in the code
index (a ComfyUI node pack that pins every WD14 repository by commit and file hash, and a model
survey that lists each v3 repository's ``main`` snapshot and release tags); the v3 hashes agree
between the two. They are the ``main`` snapshots the authors of those sources reviewed, so the
files are those of the latest release of each model. A commit hash never moves, so a cached file
is used as it is, with no request to the hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lib_dbchar.tagger.errors import ModelUnavailable, TaggerModelError

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
# Seconds to wait for the hub to answer before giving up (a dead network must not hang the tab).
HUB_TIMEOUT = 10.0


@dataclass(frozen=True)
class TaggerModel:
    """One downloadable WD14 model.

    Attributes:
        key: the name users pick (``wd-swinv2-tagger-v3``).
        repo_id: the Hugging Face repository.
        revision: the pinned 40-hex commit.
        label: a short description for the model menu.
        batch: ``"dynamic"`` when the export takes any batch size, ``"1"`` when it is fixed at one
            (informative only: the tagger reads the real value from the session).
        size_mb: approximate download size of ``model.onnx``.
    """

    key: str
    repo_id: str
    revision: str
    label: str
    batch: str
    size_mb: int


MODELS: tuple[TaggerModel, ...] = (
    TaggerModel(
        "wd-swinv2-tagger-v3", "SmilingWolf/wd-swinv2-tagger-v3",
        "627aef95638667ddcaa3ac8ae625e88ea5b02f51", "SwinV2 v3 (the demo's default)", "dynamic", 467,
    ),
    TaggerModel(
        "wd-convnext-tagger-v3", "SmilingWolf/wd-convnext-tagger-v3",
        "d39e46de298d27340111b64965e20b8185c407e6", "ConvNeXt v3", "dynamic", 395,
    ),
    TaggerModel(
        "wd-vit-tagger-v3", "SmilingWolf/wd-vit-tagger-v3",
        "7f6b584d0bd3f55c4531f14ba3d4761b2bccdc0f", "ViT v3 (fastest v3)", "dynamic", 379,
    ),
    TaggerModel(
        "wd-vit-large-tagger-v3", "SmilingWolf/wd-vit-large-tagger-v3",
        "ae469aa2e4706a3af08d3673cf73a11d1add314c", "ViT-Large v3", "dynamic", 1261,
    ),
    TaggerModel(
        "wd-eva02-large-tagger-v3", "SmilingWolf/wd-eva02-large-tagger-v3",
        "b25b82a03f7282e41aa2f257a52c7583b710bd1c", "EVA02-Large v3 (most accurate, slowest)",
        "dynamic", 1260,
    ),
    TaggerModel(
        "wd-v1-4-moat-tagger-v2", "SmilingWolf/wd-v1-4-moat-tagger-v2",
        "8452cddf280b952281b6e102411c50e981cb2908", "MOAT v2 (WD 1.4)", "1", 326,
    ),
    TaggerModel(
        "wd-v1-4-convnextv2-tagger-v2", "SmilingWolf/wd-v1-4-convnextv2-tagger-v2",
        "dbd4dbe553ee51feb3bc745b614fb762080e3912", "ConvNeXtV2 v2 (WD 1.4)", "1", 395,
    ),
    TaggerModel(
        "wd-v1-4-swinv2-tagger-v2", "SmilingWolf/wd-v1-4-swinv2-tagger-v2",
        "cdb0c7fdc70646f0af29c6f80f8df564344a69b6", "SwinV2 v2 (WD 1.4, v2.1 export)", "dynamic", 467,
    ),
)  # fmt: skip

DEFAULT_MODEL = "wd-swinv2-tagger-v3"
MODEL_KEYS: tuple[str, ...] = tuple(m.key for m in MODELS)


def get_model(key: str) -> TaggerModel:
    """The registry entry for ``key`` (a model key or its ``Org/Name`` repository).

    Raises:
        ValueError: unknown model; the message lists the known ones.
    """
    for model in MODELS:
        if key in (model.key, model.repo_id):
            return model
    raise ValueError(f"unknown tagger model {key!r}; known: {', '.join(MODEL_KEYS)}")


@dataclass(frozen=True)
class ModelFiles:
    """The two files of one model, wherever they came from.

    Attributes:
        model_path: ``model.onnx``.
        tags_path: ``selected_tags.csv``.
        name: the registry key, or the local folder's name.
        source: ``"cache"``, ``"download"`` or ``"folder"``.
        revision: the commit the files belong to (``""`` for a local folder).
    """

    model_path: Path
    tags_path: Path
    name: str
    source: str
    revision: str = ""


def local_model_files(folder: Path) -> ModelFiles:
    """The files of a model kept in a plain folder (``--model-dir``).

    Raises:
        TaggerModelError: the folder or one of the files is missing; the message says which.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TaggerModelError(
            f"model folder {folder} does not exist; point it at a folder holding {MODEL_FILE} and {TAGS_FILE}"
        )
    missing = [name for name in (MODEL_FILE, TAGS_FILE) if not (folder / name).is_file()]
    if missing:
        raise TaggerModelError(
            f"model folder {folder} has no {' or '.join(missing)}; copy both "
            f"{MODEL_FILE} and {TAGS_FILE} of one WD14 model there"
        )
    return ModelFiles(folder / MODEL_FILE, folder / TAGS_FILE, folder.name, "folder")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _unavailable(model: TaggerModel, cache_dir: Path | None, why: str) -> ModelUnavailable:
    where = str(cache_dir) if cache_dir else "the Hugging Face cache"
    return ModelUnavailable(
        f"the tagger model {model.key} is not in {where} and could not be downloaded ({why}). "
        f"Connect to the internet and run again (about {model.size_mb} MB), or download "
        f"{MODEL_FILE} and {TAGS_FILE} from https://huggingface.co/{model.repo_id} on another "
        "machine and choose their folder as the local model folder (--model-dir)."
    )


def fetch_model_files(
    model: TaggerModel,
    *,
    cache_dir: Path | None = None,
    allow_download: bool = True,
    timeout: float = HUB_TIMEOUT,
) -> ModelFiles:
    """The cached files of ``model`` at its pinned revision, downloading them when missing.

    The cache is consulted first without touching the network, so a cached model works offline
    and starts at once. A download happens only when a file is missing, ``allow_download`` is
    True and ``HF_HUB_OFFLINE`` is not set; the hub must answer within ``timeout`` seconds.

    Args:
        model: the registry entry.
        cache_dir: the hub cache folder to use (the ``tagger_cache_dir`` setting); ``None`` for
            Hugging Face's default (``HF_HUB_CACHE``).
        allow_download: False to never use the network.
        timeout: seconds for the hub's first answer.

    Returns:
        The :class:`ModelFiles`, ``source`` ``"cache"`` or ``"download"``.

    Raises:
        ModelUnavailable: neither the cache nor the network has the files; the message says what
            to do.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    def get(filename: str, local_only: bool) -> Path:
        return Path(
            hf_hub_download(
                model.repo_id,
                filename,
                revision=model.revision,
                cache_dir=str(cache_dir) if cache_dir else None,
                local_files_only=local_only,
                etag_timeout=timeout,
            )
        )

    try:
        paths = [get(name, True) for name in (MODEL_FILE, TAGS_FILE)]
        return ModelFiles(paths[0], paths[1], model.key, "cache", model.revision)
    except LocalEntryNotFoundError:
        pass
    if not allow_download:
        raise _unavailable(model, cache_dir, "downloads are switched off")
    if _hub_offline():
        raise _unavailable(model, cache_dir, "HF_HUB_OFFLINE is set")
    try:
        paths = [get(name, False) for name in (MODEL_FILE, TAGS_FILE)]
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        # OSError covers refused connections and timeouts (requests' and httpx's errors derive
        # from it or are wrapped by the hub into LocalEntryNotFoundError) and a full disk.
        raise _unavailable(model, cache_dir, f"{type(exc).__name__}: {exc}") from exc
    return ModelFiles(paths[0], paths[1], model.key, "download", model.revision)


def resolve_model_files(
    model: str,
    model_dir: str | Path | None = None,
    *,
    cache_dir: Path | None = None,
    allow_download: bool = True,
) -> ModelFiles:
    """The files to tag with: ``model_dir`` when given, else the registry model ``model``.

    Raises:
        TaggerModelError / ModelUnavailable: see :func:`local_model_files` / :func:`fetch_model_files`.
        ValueError: ``model`` is not a known model.
    """
    if model_dir and str(model_dir).strip():
        return local_model_files(Path(str(model_dir).strip()))
    return fetch_model_files(get_model(model), cache_dir=cache_dir, allow_download=allow_download)
