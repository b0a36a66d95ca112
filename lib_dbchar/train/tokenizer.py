"""Finding CLIP's tokenizer offline, and writing it into the working model folder.

Single-file checkpoints carry no tokenizer, and SD1.x and SD2.x both use CLIP's byte-level BPE
vocabulary (49,408 entries; SD2 pads with ``!`` instead of the end token). Users who run the webui
already have it on disk, in one of these places, tried in this order:

1. a folder the user names (``vocab.json`` + ``merges.txt``, or a diffusers model with ``tokenizer/``);
2. the tokenizer folder of the model-config folder given for the run (tests: the tiny model's);
3. the Hugging Face cache: ``openai/clip-vit-large-patch14`` (the webui downloads it for SD1.x at
   first start) or the ``tokenizer/`` of a cached SD1.x/SD2.x diffusers repo;
4. the BPE merges file that ``open_clip`` (the webui's SD2 text encoder) and OpenAI's ``clip``
   package ship, ``bpe_simple_vocab_16e6.txt.gz``, from which the vocabulary is rebuilt the way CLIP
   builds it (byte characters, their ``</w>`` forms, one entry per merge, the two special tokens).

Nothing is downloaded. When all fail, the error says what to install or where to point.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lib_dbchar.errors import DbcharError
from lib_dbchar.paths import atomic_write

START, END = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
# CLIP keeps the first 49152 - 256 - 2 merges of its BPE file.
MERGE_LIMIT = 49152 - 256 - 2
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_PACKAGES = ("open_clip", "clip")
MAX_LENGTH = 77

# (repo id, folder inside the repo) in the Hugging Face cache, SD1-flavoured first.
HF_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("openai/clip-vit-large-patch14", ""),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer/"),
    ("runwayml/stable-diffusion-v1-5", "tokenizer/"),
    ("CompVis/stable-diffusion-v1-4", "tokenizer/"),
    ("stabilityai/stable-diffusion-2-1", "tokenizer/"),
    ("stabilityai/stable-diffusion-2-1-base", "tokenizer/"),
    ("stabilityai/stable-diffusion-2", "tokenizer/"),
    ("stabilityai/stable-diffusion-2-base", "tokenizer/"),
)


class TokenizerNotFound(DbcharError):
    """No CLIP vocabulary on this machine; the message lists where we looked and the fixes."""


@dataclass(frozen=True)
class TokenizerSource:
    """Where the vocabulary comes from.

    Attributes:
        kind: ``"files"`` (a folder with ``vocab.json`` + ``merges.txt``) or ``"bpe"`` (a
            ``bpe_simple_vocab_16e6.txt.gz`` to rebuild from).
        path: the folder or the ``.gz`` file.
        origin: for logs, e.g. ``"Hugging Face cache: openai/clip-vit-large-patch14"``.
    """

    kind: str
    path: Path
    origin: str


def pad_token(model_kind: str) -> str:
    """SD1 pads prompts with the end token, SD2 (OpenCLIP) with ``!`` (id 0)."""
    return "!" if model_kind == "sd2" else END


def _files_folder(folder: Path) -> Path | None:
    folder = Path(folder)
    for candidate in (folder, folder / "tokenizer"):
        if (candidate / "vocab.json").is_file() and (candidate / "merges.txt").is_file():
            return candidate
    return None


def _from_hf_cache(hub_cache: Path | None) -> TokenizerSource | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo, sub in HF_CANDIDATES:
        kwargs = {"cache_dir": str(hub_cache)} if hub_cache else {}
        vocab = try_to_load_from_cache(repo, f"{sub}vocab.json", **kwargs)
        merges = try_to_load_from_cache(repo, f"{sub}merges.txt", **kwargs)
        if isinstance(vocab, str) and isinstance(merges, str):
            return TokenizerSource("files", Path(vocab).parent, f"Hugging Face cache: {repo}")
    return None


def _from_packages(packages: Sequence[str]) -> TokenizerSource | None:
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = Path(location) / BPE_FILE
            if path.is_file():
                return TokenizerSource("bpe", path, f"the {name} package")
    return None


def find_tokenizer(
    *,
    explicit: Path | None = None,
    config_dir: Path | None = None,
    hub_cache: Path | None = None,
    packages: Sequence[str] = BPE_PACKAGES,
) -> TokenizerSource:
    """Find a CLIP vocabulary on this machine (see the module docstring for the order).

    Args:
        explicit: a folder the user named.
        config_dir: the run's model-config folder, if any.
        hub_cache: the Hugging Face hub cache (default: the one ``huggingface_hub`` uses).
        packages: packages to look for ``bpe_simple_vocab_16e6.txt.gz`` in.

    Returns:
        The :class:`TokenizerSource`.

    Raises:
        TokenizerNotFound: nothing found; the message names what was searched and how to fix it.
    """
    if explicit is not None:
        folder = _files_folder(Path(explicit))
        if folder is None and Path(explicit).name == BPE_FILE and Path(explicit).is_file():
            return TokenizerSource("bpe", Path(explicit), str(explicit))
        if folder is None:
            raise TokenizerNotFound(
                f"{explicit} holds no vocab.json + merges.txt (nor a tokenizer/ folder with them); "
                "point to a CLIP tokenizer folder."
            )
        return TokenizerSource("files", folder, str(folder))
    if config_dir is not None and (folder := _files_folder(Path(config_dir))) is not None:
        return TokenizerSource("files", folder, f"model config folder {config_dir}")
    found = _from_hf_cache(hub_cache) or _from_packages(packages)
    if found is None:
        raise TokenizerNotFound(
            "No CLIP tokenizer found offline: looked in the Hugging Face cache for "
            f"{', '.join(repo for repo, _ in HF_CANDIDATES[:2])} and others, and for {BPE_FILE} in the "
            f"{' / '.join(packages)} packages. Fix: `pip install open_clip_torch` (it ships the file), or "
            "download openai/clip-vit-large-patch14 once with `huggingface-cli download "
            "openai/clip-vit-large-patch14 vocab.json merges.txt`, or name a tokenizer folder."
        )
    return found


def byte_characters() -> list[str]:
    """One printable character per byte value, in CLIP's vocabulary order.

    Printable bytes stand for themselves; the other bytes (controls, space, ...) borrow characters
    from U+0100 upwards in byte order, so no token ever contains a raw space or control character.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def vocab_from_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Rebuild CLIP's vocabulary and merges from ``bpe_simple_vocab_16e6.txt.gz``.

    Args:
        path: the gzip file; its first line is a header, then one merge (``"a b"``) per line.

    Returns:
        ``(vocab, merges)``: token -> id (49,408 entries for the real file) and the merges in rank order.
    """
    lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGE_LIMIT + 1] if line.strip()]
    chars = byte_characters()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [START, END]
    return {token: i for i, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def write_tokenizer(source: TokenizerSource, folder: Path, *, model_kind: str) -> Path:
    """Write a ``CLIPTokenizer`` folder that transformers 4.30 and 5.x load with ``from_pretrained``.

    Args:
        source: from :func:`find_tokenizer`.
        folder: the target (e.g. ``<working>/tokenizer``), created.
        model_kind: ``"sd1"`` or ``"sd2"`` (decides the padding token).

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    if source.kind == "bpe":
        vocab, merges = vocab_from_bpe(source.path)
        return write_vocab(folder, vocab, merges, model_kind=model_kind)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(source.path / name, folder / name)
    _write_tokenizer_config(folder, model_kind)
    return folder


def write_vocab(
    folder: Path, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], *, model_kind: str
) -> Path:
    """Write a ``CLIPTokenizer`` folder from a vocabulary and its merges (atomic writes).

    Also what the tiny test models use: their vocabulary is the byte characters alone, with no
    merges, which makes a complete character-level CLIP tokenizer.

    Args:
        folder: the target, created.
        vocab: token -> id; must hold :data:`START` and :data:`END` (and ``!`` for SD2's padding).
        merges: BPE merges in rank order (may be empty).
        model_kind: ``"sd1"`` or ``"sd2"`` (decides the padding token).

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "vocab.json", json.dumps(dict(vocab), ensure_ascii=False))
    atomic_write(folder / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    _write_tokenizer_config(folder, model_kind)
    return folder


def _write_tokenizer_config(folder: Path, model_kind: str) -> None:
    specials = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": pad_token(model_kind)}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        **specials,
    }
    atomic_write(folder / "special_tokens_map.json", json.dumps(specials, indent=2) + "\n")
    atomic_write(folder / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
