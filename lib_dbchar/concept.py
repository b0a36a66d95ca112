"""The concept: the instance token that names the character and the prompts built around it.

A concept is what the guide's "Concepts" section fills in: the token (``star guardian neeko``),
the instance prompt (``<token>, [filewords]``), the class prompt (``[filewords]``), the negative
prompt, the sample prompts and how many class (regularisation) images to make. A project holds one
or more concepts in ``concept.json``; a training run uses all of them.

``[filewords]`` stands for the caption of each picture (``stem.txt`` beside ``stem.png``). The
class prompt must never contain the token: it teaches the model what the *class* looks like
without the character, so :func:`validate_concept` rejects a class prompt that names the token and
:func:`class_prompt` strips the token from the captions before they fill ``[filewords]``.

Everything here is plain text work (no torch, no images), so the Concept tab can show every prompt
live while the user types.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lib_dbchar.config import from_dict, setting, to_dict
from lib_dbchar.paths import atomic_write

FILEWORDS = "[filewords]"
CLASS_DIR_PREFIX = "classifiers_"
CONCEPT_FILE_VERSION = 1
# The guide's total class image count is 10 x the number of pictures in the dataset.
CLASS_IMAGES_PER_IMAGE = 10

# The guide's negative prompt, used by the guide for class images and samples alike.
GUIDE_NEGATIVE_PROMPT = (
    "multiple girls, 2girls, 3girls, 4girls, (ugly:1.3), (fused fingers), (too many fingers), "
    "(((cropped))), (bad anatomy:1.5), (watermark:1.5), (words), letters, untracked eyes, asymmetric eyes, "
    "floating head, (logo:1.5), (bad hands:1.3), (mangled hands:1.2), (missing hands), (missing arms), "
    "backward hands, floating jewelry, unattached jewelry, floating head, doubled head, unattached head, "
    "doubled head, head in body, (misshapen body:1.1), (badly fitted headwear:1.2), floating arms, "
    "(too many arms:1.5), limbs fused with body, (facial blemish:1.5), badly fitted clothes, imperfect eyes, "
    "untracked eyes, crossed eyes, hair growing from clothes, partial faces, hair not attached to head"
)


@dataclass(frozen=True)
class Concept:
    """One character (or style) to teach, with the prompts around its token.

    Empty prompt fields mean "the default", resolved by the functions below so that the UI can
    show the effective prompt next to the field.
    """

    instance_token: str = setting(
        "",
        label="Instance token",
        help="The words that will call up your character, e.g. 'star guardian neeko'. "
        "Pick words the source model does not already tie to something else.",
    )
    instance_prompt: str = setting(
        "",
        label="Instance prompt",
        help="Prompt for each of your pictures; [filewords] is replaced by the picture's caption. "
        "Empty: '<token>, [filewords]'.",
    )
    class_prompt: str = setting(
        FILEWORDS,
        label="Class prompt",
        help="Prompt for the class images made from each picture. The token must not appear here; "
        "it is also removed from the captions that fill [filewords].",
    )
    negative_prompt: str = setting(
        GUIDE_NEGATIVE_PROMPT,
        label="Negative prompt",
        help="Used when generating class images. Default: the guide's list.",
        multiline=True,
    )
    sample_prompt: str = setting(
        "",
        label="Sample prompt",
        help="Prompt of the preview images saved during training. "
        "Empty: the token followed by the first picture's caption.",
    )
    sample_negative_prompt: str = setting(
        "",
        label="Sample negative prompt",
        help="Negative prompt of the previews. Empty: the negative prompt above.",
        multiline=True,
    )
    num_class_images: int = setting(
        0,
        label="Class images",
        help="Total number of class (regularisation) images. 0: 10 x the number of pictures (the guide).",
        minimum=0,
        maximum=100_000,
    )
    dataset_dir: str = setting(
        "",
        label="Pictures folder",
        help="Folder with the pictures and their .txt captions. Empty: the project's dataset folder.",
    )
    class_dir: str = setting(
        "",
        label="Class images folder",
        help="Empty: classes/classifiers_<n> in the project, reused by every run and topped up.",
    )
    keep_tokens: int = setting(
        0,
        label="Keep first N tags",
        help="With shuffling on, the first N tags of each caption stay in place.",
        minimum=0,
        maximum=75,
    )
    shuffle_tags: bool = setting(
        False,
        label="Shuffle tags",
        help="Shuffle the caption's tags (after the first N) anew every time a picture is used.",
    )
    caption_dropout: float = setting(
        0.0,
        label="Caption dropout",
        help="Chance of training a picture with its caption left out (prompt = the token alone).",
        minimum=0.0,
        maximum=1.0,
    )


# --- text helpers ----------------------------------------------------------------------------


def split_tags(text: str) -> list[str]:
    """The tags of a caption: split on commas and new lines, trimmed, empty ones dropped.

    Args:
        text: a caption such as ``"1girl, long hair,\\nsmile"``.

    Returns:
        ``["1girl", "long hair", "smile"]``.
    """
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def join_tags(tags: Sequence[str]) -> str:
    """Tags joined the way captions are written: ``", "``."""
    return ", ".join(tags)


def tidy_prompt(text: str) -> str:
    """Remove the empty comma slots a blank ``[filewords]`` or a stripped token leaves behind.

    ``"neeko, , smile,"`` -> ``"neeko, smile"``. Text without commas is only trimmed, so
    sentence-style prompts (``"a photo of sks person"``) pass unchanged.
    """
    parts = [" ".join(part.split()) for part in text.split(",")]
    return ", ".join(part for part in parts if part)


def _token_pattern(token: str) -> re.Pattern[str]:
    """Match the token as whole words, case-insensitively; spaces also match ``_`` (booru tag style)."""
    words = [re.escape(word) for word in token.split()]
    return re.compile(r"(?<![\w])" + r"[\s_]+".join(words) + r"(?![\w])", re.IGNORECASE)


def contains_token(text: str, token: str) -> bool:
    """Whether ``text`` names ``token`` (whole words, any case, ``_`` or spaces between words).

    Args:
        text: a prompt or caption.
        token: the instance token; an empty token is never contained.
    """
    return bool(token.strip()) and _token_pattern(token).search(text) is not None


def strip_token(caption: str, token: str) -> str:
    """Remove every mention of the token from a caption.

    A tag that *is* the token goes away; inside a longer tag only the token's words go
    (``"sks person"`` -> ``"person"``).

    Args:
        caption: comma-separated tags.
        token: the instance token.

    Returns:
        The caption without the token, tidied (no empty tags).
    """
    if not token.strip():
        return tidy_prompt(caption)
    pattern = _token_pattern(token)
    return join_tags(
        [t for t in (" ".join(pattern.sub(" ", tag).split()) for tag in split_tags(caption)) if t]
    )


def arrange_tags(
    tags: Sequence[str], *, keep_first: int, shuffle: bool, rng: random.Random | None
) -> list[str]:
    """Shuffle a caption's tags except the first ``keep_first``.

    Args:
        tags: the caption's tags in file order.
        keep_first: how many leading tags keep their place.
        shuffle: when False the tags come back unchanged.
        rng: the random source (the training loop passes one seeded per step, so a resumed run
            shuffles exactly as an uninterrupted one).

    Returns:
        A new list.
    """
    tags = list(tags)
    if not shuffle or rng is None or len(tags) - keep_first < 2:
        return tags
    head, tail = tags[:keep_first], tags[keep_first:]
    rng.shuffle(tail)
    return head + tail


def fill_filewords(template: str, caption: str) -> str:
    """Put ``caption`` where the template says ``[filewords]`` (any case) and tidy the result."""
    return tidy_prompt(re.sub(re.escape(FILEWORDS), lambda _: caption, template, flags=re.IGNORECASE))


# --- effective prompts -----------------------------------------------------------------------


def effective_instance_prompt(concept: Concept) -> str:
    """The instance prompt template in use: the field, or ``"<token>, [filewords]"`` when empty."""
    return concept.instance_prompt.strip() or f"{concept.instance_token.strip()}, {FILEWORDS}"


def instance_prompt(concept: Concept, caption: str, *, rng: random.Random | None = None) -> str:
    """The prompt one picture is trained with.

    When the template names the token itself, the token is stripped from the caption first so it
    is not said twice. Tag shuffling and caption dropout apply only when ``rng`` is given (at
    training time); without it the result is the plain, reproducible prompt.

    Args:
        concept: the concept.
        caption: the picture's caption (``stem.txt``), possibly empty.
        rng: random source for shuffling and dropout.

    Returns:
        E.g. ``"star guardian neeko, 1girl, smile"``.
    """
    template = effective_instance_prompt(concept)
    if contains_token(template, concept.instance_token):
        caption = strip_token(caption, concept.instance_token)
    tags = split_tags(caption)
    if rng is not None:
        if concept.caption_dropout > 0 and rng.random() < concept.caption_dropout:
            tags = []
        tags = arrange_tags(tags, keep_first=concept.keep_tokens, shuffle=concept.shuffle_tags, rng=rng)
    return fill_filewords(template, join_tags(tags))


def class_prompt(concept: Concept, caption: str) -> str:
    """The prompt of the class images made from one picture: the caption without the token."""
    return fill_filewords(concept.class_prompt, strip_token(caption, concept.instance_token))


def sample_prompt(concept: Concept, first_caption: str) -> str:
    """The preview prompt: the field, or the token followed by the first picture's caption."""
    if concept.sample_prompt.strip():
        return concept.sample_prompt.strip()
    caption = strip_token(first_caption, concept.instance_token)
    return tidy_prompt(f"{concept.instance_token.strip()}, {caption}")


def sample_negative_prompt(concept: Concept) -> str:
    """The previews' negative prompt: the field, or the concept's negative prompt when empty."""
    return concept.sample_negative_prompt.strip() or concept.negative_prompt.strip()


def class_image_count(concept: Concept, dataset_size: int) -> int:
    """How many class images the concept wants: the field, or 10 x the dataset size when 0."""
    return concept.num_class_images or CLASS_IMAGES_PER_IMAGE * dataset_size


def class_dir_name(index: int) -> str:
    """The folder name of concept ``index``'s class images (the guide's ``classifiers_0``)."""
    return f"{CLASS_DIR_PREFIX}{index}"


def resolve_dirs(concept: Concept, project_root: Path, index: int) -> tuple[Path, Path]:
    """The concept's pictures folder and class images folder, defaults filled in.

    Args:
        concept: the concept.
        project_root: the project folder (``dataset/`` and ``classes/`` live there).
        index: the concept's position in the project (0 for the first).

    Returns:
        ``(dataset_dir, class_dir)``; relative paths in the fields are taken from the project.
    """
    root = Path(project_root)
    dataset = Path(concept.dataset_dir).expanduser() if concept.dataset_dir.strip() else root / "dataset"
    classes = (
        Path(concept.class_dir).expanduser()
        if concept.class_dir.strip()
        else root / "classes" / class_dir_name(index)
    )
    return (
        dataset if dataset.is_absolute() else root / dataset,
        classes if classes.is_absolute() else root / classes,
    )


# --- validation ------------------------------------------------------------------------------


def validate_concept(concept: Concept, *, index: int = 0) -> None:
    """Reject concepts that would train the wrong thing, naming the field.

    Args:
        concept: the concept to check.
        index: its position, used in messages when a run has several concepts.

    Raises:
        ValueError: no token; an instance prompt that neither names the token nor has
            ``[filewords]``; a class prompt that contains the token.
    """
    where = f"Concept {index + 1}" if index else "Concept"
    token = concept.instance_token.strip()
    if not token:
        raise ValueError(f"{where}.instance_token: type the words that will name your character.")
    if FILEWORDS in token.lower():
        raise ValueError(f"{where}.instance_token: {token!r} contains {FILEWORDS}; use plain words.")
    template = effective_instance_prompt(concept)
    if not contains_token(template, token) and FILEWORDS not in template.lower():
        raise ValueError(
            f"{where}.instance_prompt: {template!r} contains neither the token {token!r} nor {FILEWORDS}; "
            f"add the token (e.g. '{token}, {FILEWORDS}')."
        )
    if contains_token(concept.class_prompt, token):
        raise ValueError(
            f"{where}.class_prompt: {concept.class_prompt!r} contains the instance token {token!r}. "
            "The class prompt describes the class without your character; remove the token "
            f"(the guide uses just {FILEWORDS})."
        )


# --- the project's concept.json -------------------------------------------------------------


def save_concepts(path: Path, concepts: Sequence[Concept]) -> Path:
    """Write the concepts to ``path`` (a project's ``concept.json``) atomically.

    Args:
        path: the file to write.
        concepts: one or more concepts, in training order.

    Returns:
        ``path``.
    """
    record = {"version": CONCEPT_FILE_VERSION, "concepts": [to_dict(c) for c in concepts]}
    return atomic_write(Path(path), json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def load_concepts(path: Path) -> list[Concept]:
    """Read the concepts saved by :func:`save_concepts`.

    A file holding a single concept object (no ``"concepts"`` list) is read as one concept.

    Args:
        path: the ``concept.json``.

    Returns:
        The concepts, in file order.

    Raises:
        FileNotFoundError: no such file (the message says how to make one).
        ValueError: the file is not valid JSON or a field is invalid; the message names the
            file and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; fill in the Concept tab and save it first.")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); fix or delete it and save the concept again."
        ) from None
    items = record.get("concepts", [record]) if isinstance(record, dict) else record
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f'{path}: expected {{"concepts": [{{...}}, ...]}}; save the concept again.')
    concepts = []
    for i, item in enumerate(items):
        try:
            concepts.append(from_dict(Concept, item))
        except ValueError as exc:
            raise ValueError(f"{path}, concept {i + 1}: {exc}") from None
    return concepts
