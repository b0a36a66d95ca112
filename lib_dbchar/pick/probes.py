"""The probe set of a run: prompts that show whether a checkpoint can still leave its dataset.

The guide's overfitting test: "my datasets are usually only front-pose, so I'll test with
side/back poses. At low training steps, it'll easily be able to do it, but at the cost of character
accuracy. At very high training steps, your character model will not be able to do it." A probe
set automates the choice of prompts for one run:

* ``frontal`` -- the character as the dataset shows it (the accuracy reference);
* ``side``, ``behind`` -- the token and the character's constant traits in poses the dataset
  lacks;
* ``outfit``, ``background`` -- an outfit and a setting the dataset does not have (a character
  that only ever comes in its dataset's clothes or room is overfit);
* ``leak`` -- the frontal prompt without the token *and without the traits*: the character must
  not appear (the traits are left out because the tagger would otherwise find them for the
  prompt's sake, not the leak's);
* ``drift`` -- the concept's class prompt, compared with the source model's column: training
  should not change what the class looks like.

Probes are plain data (:class:`Probe`), kept per run in ``pick/probes.json`` where the user may
edit them; once written the file is used as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.concept import (
    Concept,
    class_prompt,
    contains_token,
    load_concepts,
    resolve_dirs,
    sample_negative_prompt,
)
from lib_dbchar.errors import DbcharError
from lib_dbchar.paths import atomic_write
from lib_dbchar.tagger.backups import MANIFEST, backup_root
from lib_dbchar.tagger.captions import dedupe, tag_key
from lib_dbchar.tagger.editor import TRAIT_SHARE, common_traits, load_dataset, tag_frequencies

PROBE_KINDS = ("frontal", "side", "behind", "outfit", "background", "leak", "drift")
DEFAULT_SEEDS = (1234, 5678)
PICK_DIR = "pick"
PROBES_FILE = "probes.json"
PROBES_VERSION = 1
# Where the demo (and users following the README) keep the tagger's per-picture JSON.
TAGGER_JSON = "tags.json"
# The tag editor labels its trait drops "drop traits: a, b" (tagger.editor.plan_drop_traits).
_DROP_LABEL = "drop traits:"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_MAX_SEEDS = 16
# The drift prompt is the class prompt filled with a typical caption: the dataset's tags on at
# least half as many pictures as the most frequent one, at most this many.
_TYPICAL_SHARE = 0.5
_TYPICAL_MAX = 16

# Tags that say how a picture is framed, posed or set, or who is in it -- never a constant trait
# of the character even when most pictures have them (a front-pose dataset tags nearly every
# picture "looking at viewer").
_NOT_TRAITS = frozenset(
    {
        # view and framing
        "from side", "profile", "from behind", "back", "from above", "from below", "straight-on",
        "facing viewer", "looking at viewer", "looking back", "looking away", "looking to the side",
        "looking up", "looking down", "upper body", "full body", "cowboy shot", "portrait", "close-up",
        "head tilt", "dutch angle", "feet out of frame", "lower body",
        # posture
        "standing", "sitting", "lying", "kneeling", "squatting", "walking", "running", "arms up",
        "arms behind back", "arms at sides", "hand up", "hands up",
        # expression (changes from picture to picture)
        "smile", "open mouth", "closed mouth", "blush", "parted lips", "closed eyes",
        # who is in the picture
        "solo", "1girl", "1boy", "1other", "2girls", "multiple girls", "multiple boys", "male focus",
        "female focus",
        # setting
        "outdoors", "indoors", "day", "night", "sky",
        # ratings (some exports list them with the general tags)
        "general", "sensitive", "questionable", "explicit",
    }
)  # fmt: skip
_SUBJECT_TAGS = ("1girl", "1boy", "1other", "solo")
_FRAMING_TAGS = (
    "looking at viewer", "facing viewer", "straight-on", "upper body", "cowboy shot", "portrait", "full body",
)  # fmt: skip
# (tag to prompt and expect, tags that mean the dataset already has it)
_SIDE = (("from side", ("from side", "profile")),)
_BEHIND = (("from behind", ("from behind", "back")),)
_OUTFITS = (
    ("school uniform", ("school uniform", "serafuku", "sailor collar", "blazer")),
    ("kimono", ("kimono", "yukata", "japanese clothes")),
    ("maid", ("maid", "maid headdress", "maid apron")),
    ("swimsuit", ("swimsuit", "bikini", "one-piece swimsuit")),
    ("armor", ("armor", "breastplate", "gauntlets")),
    ("hoodie", ("hoodie", "hood")),
)
_BACKGROUNDS = (
    ("beach", ("beach", "ocean", "sand", "shore")),
    ("forest", ("forest", "tree", "nature")),
    ("city", ("city", "cityscape", "street", "building")),
    ("snow", ("snow", "winter", "snowing")),
    ("classroom", ("classroom", "desk", "chalkboard")),
)
_KIND_LABELS = {
    "side": "from the side",
    "behind": "from behind",
    "outfit": "in another outfit",
    "background": "in another place",
}


# --- the probe ---------------------------------------------------------------------------------


class InvalidProbe(DbcharError, ValueError):
    """A probe or a probe file that cannot be used; the message names the file, probe and field."""


def _require_text(where: str, value: Any, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidProbe(f"{where}: expected text, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise InvalidProbe(f"{where}: must not be empty")
    return value


def _require_seeds(where: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidProbe(f"{where}: expected a list of whole numbers, got {value!r}")
    seeds = tuple(value)
    if not seeds or len(seeds) > _MAX_SEEDS:
        raise InvalidProbe(f"{where}: give 1 to {_MAX_SEEDS} seeds, got {len(seeds)}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise InvalidProbe(f"{where}: {seed!r} is not a seed (a whole number from 0 to 4294967295)")
    if len(set(seeds)) != len(seeds):
        raise InvalidProbe(f"{where}: {list(seeds)} repeats a seed")
    return seeds


@dataclass(frozen=True)
class Probe:
    """One row group of the grid: a prompt drawn with each of its seeds by every checkpoint.

    Attributes:
        id: a slug unique in its set (``frontal``, ``side``, ...); names the cell files.
        kind: one of :data:`PROBE_KINDS`; tells the scorer what to look for.
        label: one line for people, e.g. ``"from the side (not in the dataset)"``.
        prompt: the positive prompt (the webui's syntax).
        negative: the negative prompt.
        seeds: one cell per seed.
        expect_tags: tags the tagger should find on a good cell (``("from side",)``, the outfit or
            background tag); empty for ``frontal``, ``leak`` and ``drift``.

    Raises:
        ValueError: naming the field, for a bad slug or kind, an empty prompt, or bad seeds.
    """

    id: str
    kind: str
    label: str
    prompt: str
    negative: str
    seeds: tuple[int, ...]
    expect_tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"Probe {self.id!r}"
        if not isinstance(self.id, str) or not _SLUG.match(self.id):
            raise InvalidProbe(
                f"{where}.id: use lower-case letters, digits, '-' or '_' (up to 48), e.g. 'side-2'"
            )
        if self.kind not in PROBE_KINDS:
            raise InvalidProbe(f"{where}.kind: {self.kind!r} is not one of {', '.join(PROBE_KINDS)}")
        _require_text(f"{where}.label", self.label, empty_ok=True)
        _require_text(f"{where}.prompt", self.prompt)
        _require_text(f"{where}.negative", self.negative, empty_ok=True)
        # Lists from JSON become tuples so probes stay hashable and comparable.
        object.__setattr__(self, "seeds", _require_seeds(f"{where}.seeds", self.seeds))
        if isinstance(self.expect_tags, str) or not isinstance(self.expect_tags, Iterable):
            raise InvalidProbe(f"{where}.expect_tags: expected a list of tags, got {self.expect_tags!r}")
        tags = tuple(self.expect_tags)
        for tag in tags:
            _require_text(f"{where}.expect_tags", tag)
        object.__setattr__(self, "expect_tags", tags)

    def cell_keys(self) -> list[str]:
        """The names of this probe's cells: ``"<id>-<seed>"`` per seed."""
        return [f"{self.id}-{seed}" for seed in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (lists for the tuples)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "prompt": self.prompt,
            "negative": self.negative,
            "seeds": list(self.seeds),
            "expect_tags": list(self.expect_tags),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Probe:
        """Rebuild a probe saved by :meth:`to_dict`.

        Raises:
            ValueError: not an object, an unknown or missing field, or an invalid value; the
                message names the field.
        """
        if not isinstance(data, Mapping):
            raise InvalidProbe(f"Probe: expected an object with id, kind, prompt, ...; got {data!r}")
        known = ("id", "kind", "label", "prompt", "negative", "seeds", "expect_tags")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidProbe(f"Probe {data.get('id')!r}: unknown field(s) {', '.join(unknown)}")
        missing = [k for k in ("id", "kind", "prompt", "seeds") if k not in data]
        if missing:
            raise InvalidProbe(f"Probe {data.get('id')!r}.{missing[0]}: missing")
        return cls(
            id=data["id"],
            kind=data["kind"],
            label=data.get("label", ""),
            prompt=data["prompt"],
            negative=data.get("negative", ""),
            seeds=data["seeds"],
            expect_tags=data.get("expect_tags", ()),
        )


def check_probe_set(probes: Sequence[Probe]) -> None:
    """Reject an empty set or repeated ids (cell files are named by id).

    Raises:
        ValueError: naming the repeated id.
    """
    if not probes:
        msg = "probes: the set is empty; keep at least one probe"
        raise InvalidProbe(msg)
    seen: set[str] = set()
    for probe in probes:
        if probe.id in seen:
            raise InvalidProbe(f"Probe {probe.id!r}.id: used twice; every probe needs its own id")
        seen.add(probe.id)


# --- the character's traits --------------------------------------------------------------------


def is_trait_tag(tag: str) -> bool:
    """Whether a tag can be a constant trait of a character (not a pose, framing, setting or count).

    Args:
        tag: a tag in any spelling (``Looking_At_Viewer``, ``white background``).

    Returns:
        False for view/pose/framing/expression/subject/setting tags and every ``... background``.
    """
    key = tag_key(tag)
    return bool(key) and key not in _NOT_TRAITS and not key.endswith("background")


def _tagger_json_traits(path: Path, min_share: float) -> list[str]:
    """General tags on at least ``min_share`` of the pictures in a tagger runner JSON file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: not a readable tagger JSON file ({exc}); delete it or tag the dataset again."
        ) from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        raise InvalidProbe(f"{path}: no 'images' list; it is not a tagger JSON file. Move it away or re-tag.")
    counts: dict[str, int] = {}
    spelling: dict[str, str] = {}
    for image in images:
        names = {tag_key(pair[0]): pair[0] for pair in image.get("general", []) if pair}
        for key, name in names.items():
            counts[key] = counts.get(key, 0) + 1
            spelling.setdefault(key, name)
    total = max(1, len(images))
    ranked = sorted(counts, key=lambda k: (-counts[k], k))
    return [spelling[k] for k in ranked if counts[k] / total >= min_share]


def _dropped_traits(dataset_dir: Path) -> list[str]:
    """Traits the tag editor removed from the captions (its "drop traits" backups not undone)."""
    base = backup_root(dataset_dir)
    if not base.is_dir():
        return []
    out: list[str] = []
    for manifest in sorted(base.glob(f"*/{MANIFEST}")):
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            # The undo code skips damaged manifests too; the captions themselves are intact.
            continue
        label = str(doc.get("label", ""))
        if not doc.get("undone") and label.startswith(_DROP_LABEL):
            out.extend(t.strip() for t in label[len(_DROP_LABEL) :].split(",") if t.strip())
    return out


def _project_concept(project_dir: Path) -> Concept | None:
    concept_file = Path(project_dir) / "concept.json"
    if not concept_file.is_file():
        return None
    concepts = load_concepts(concept_file)
    return concepts[0] if concepts else None


def _unique(tags: Iterable[str]) -> list[str]:
    """The tags trimmed, each once (the caption editor's :func:`dedupe`)."""
    return dedupe(t.strip() for t in tags)


def character_traits(
    project_dir: Path,
    *,
    min_share: float = TRAIT_SHARE,
    dataset_dir: Path | None = None,
    token: str | None = None,
) -> list[str]:
    """The character's constant tags (hair and eye colour, signature clothes, ...).

    Read from three places, because the guide's workflow drops the traits from the captions so
    the token absorbs them: the captions (tags on at least ``min_share`` of the pictures), the
    tagger's JSON ``<project>/tags.json`` when there is one (what the tagger saw before any
    edit), and the tag editor's "drop traits" backups of the dataset.

    Args:
        project_dir: the project folder.
        min_share: 0..1; a tag on at least this share of the pictures is a trait.
        dataset_dir: the pictures; default the first concept's folder (the project's ``dataset/``).
        token: the instance token to leave out; default the first concept's token.

    Returns:
        Tags, most frequent first, without the token and without pose, framing, expression,
        subject-count or background tags.

    Raises:
        ValueError: ``min_share`` outside (0, 1], or a damaged ``concept.json`` / ``tags.json``
            (the message names the file).
    """
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share: {min_share} must be in (0, 1]")
    project_dir = Path(project_dir)
    concept = _project_concept(project_dir)
    if token is None:
        token = concept.instance_token if concept else ""
    if dataset_dir is None:
        dataset_dir = resolve_dirs(concept, project_dir, 0)[0] if concept else project_dir / "dataset"
    found: list[str] = []
    if Path(dataset_dir).is_dir():
        found += [row.tag for row in common_traits(load_dataset(dataset_dir), min_share)]
    tagger_json = project_dir / TAGGER_JSON
    if tagger_json.is_file():
        found += _tagger_json_traits(tagger_json, min_share)
    found += _dropped_traits(Path(dataset_dir))
    return [t for t in _unique(found) if is_trait_tag(t) and not contains_token(t, token)]


def dataset_tag_counts(dataset_dir: Path) -> dict[str, int]:
    """Tag -> number of pictures whose caption has it, most frequent first.

    Raises:
        DbcharError: the folder does not exist.
    """
    return {row.tag: row.count for row in tag_frequencies(load_dataset(dataset_dir))}


# --- building the set --------------------------------------------------------------------------


def _present(dataset_tags: Mapping[str, int]) -> dict[str, int]:
    """``tag_key`` -> count of the dataset's tags (counts of 0 mean absent)."""
    out: dict[str, int] = {}
    for tag, count in dataset_tags.items():
        if count > 0:
            out[tag_key(tag)] = out.get(tag_key(tag), 0) + int(count)
    return out


def _choose(candidates: Sequence[tuple[str, tuple[str, ...]]], present: Mapping[str, int]) -> tuple[str, str]:
    """The first candidate none of whose related tags the dataset has, and a note for the label.

    When the dataset has every candidate the first one is used anyway (the probe still shows
    flexibility) and the label says so.
    """
    for tag, related in candidates:
        if not any(tag_key(r) in present for r in related):
            return tag, "not in the dataset"
    tag, related = candidates[0]
    had = next(r for r in related if tag_key(r) in present)
    return tag, f"the dataset has {had!r} too"


def _frequent(tags: Sequence[str], present: Mapping[str, int], limit: int) -> list[str]:
    """Those of ``tags`` on at least half as many pictures as the dataset's most frequent tag."""
    if not present:
        return []
    floor = _TYPICAL_SHARE * max(present.values())
    chosen = [t for t in tags if present.get(tag_key(t), 0) >= floor and present.get(tag_key(t), 0) > 0]
    return sorted(chosen, key=lambda t: -present[tag_key(t)])[:limit]


def _typical_caption(dataset_tags: Mapping[str, int]) -> str:
    present = _present(dataset_tags)
    if not present:
        return ""
    floor = _TYPICAL_SHARE * max(present.values())
    ranked = sorted((t for t, n in dataset_tags.items() if n >= floor), key=lambda t: -dataset_tags[t])
    return ", ".join(_unique(ranked)[:_TYPICAL_MAX])


def _join(*parts: Iterable[str]) -> str:
    return ", ".join(_unique(t for part in parts for t in part if t.strip()))


def build_probes(
    concept: Concept,
    traits: Sequence[str],
    dataset_tags: Mapping[str, int],
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
) -> list[Probe]:
    """The default probe set of a run.

    Args:
        concept: the run's (first) concept: token, class prompt, sample negative.
        traits: the character's constant tags (:func:`character_traits`); the token is removed.
        dataset_tags: tag -> pictures carrying it (:func:`dataset_tag_counts`); poses, outfits and
            backgrounds are chosen among those it lacks.
        seeds: the seeds of every probe.

    Returns:
        Seven probes: frontal, side, behind, outfit, background, leak, drift. Negative prompt =
        the concept's sample negative prompt.

    Raises:
        ValueError: the concept has no token, or bad seeds.
    """
    token = concept.instance_token.strip()
    if not token:
        msg = "Concept.instance_token: the probes need the token; fill in the Concept tab."
        raise ValueError(msg)
    seeds = tuple(seeds)
    negative = sample_negative_prompt(concept)
    present = _present(dataset_tags)
    traits = [t for t in _unique(traits) if is_trait_tag(t) and not contains_token(t, token)]
    subject = _frequent(_SUBJECT_TAGS, present, 2)
    framing = _frequent(_FRAMING_TAGS, present, 2) or ["looking at viewer"]

    def probe(kind: str, label: str, prompt: str, expect: tuple[str, ...] = ()) -> Probe:
        return Probe(kind, kind, label, prompt, negative, seeds, expect)

    frontal = _join([token], subject, traits, framing)
    probes = [probe("frontal", "facing the viewer, as in the dataset", frontal)]
    choices = (("side", _SIDE), ("behind", _BEHIND), ("outfit", _OUTFITS), ("background", _BACKGROUNDS))
    for kind, candidates in choices:
        tag, note = _choose(candidates, present)
        label = f"{_KIND_LABELS[kind]}: {tag} ({note})"
        probes.append(probe(kind, label, _join([token], subject, traits, [tag]), (tag,)))
    leak = _join(subject, framing)
    probes.append(probe("leak", "without the token: the character must not appear", leak))
    drift = class_prompt(concept, _typical_caption(dataset_tags)) or leak
    probes.append(probe("drift", "the class prompt: should look like the source model's", drift))
    return probes


# --- the run's probes.json ---------------------------------------------------------------------


def probes_path(run_dir: Path) -> Path:
    """``<run>/pick/probes.json``."""
    return Path(run_dir) / PICK_DIR / PROBES_FILE


def save_probes(run_dir: Path, probes: Sequence[Probe]) -> Path:
    """Write the probe set of a run atomically.

    Args:
        run_dir: the run folder.
        probes: the set (ids unique).

    Returns:
        The ``pick/probes.json`` path.

    Raises:
        ValueError: an empty set or a repeated id.
    """
    check_probe_set(probes)
    record = {"version": PROBES_VERSION, "probes": [p.to_dict() for p in probes]}
    return atomic_write(probes_path(run_dir), json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def load_probes(run_dir: Path) -> list[Probe] | None:
    """The probe set saved in a run, or ``None`` when there is none yet.

    Raises:
        ValueError: the file is not valid JSON, has no probe list, or a probe is invalid; the
            message names the file, the probe and the field, and says how to recover.
    """
    path = probes_path(run_dir)
    if not path.is_file():
        return None
    fix = "fix it, or delete it to get the default probes back"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidProbe(f"{path} is not valid JSON ({exc}); {fix}.") from None
    items = record.get("probes") if isinstance(record, dict) else None
    if not isinstance(items, list):
        raise InvalidProbe(f'{path}: expected {{"version": 1, "probes": [...]}}; {fix}.')
    probes = []
    for i, item in enumerate(items):
        try:
            probes.append(Probe.from_dict(item))
        except ValueError as exc:
            raise InvalidProbe(f"{path}, probe {i + 1}: {exc}; {fix}.") from None
    try:
        check_probe_set(probes)
    except ValueError as exc:
        raise InvalidProbe(f"{path}: {exc}; {fix}.") from None
    return probes


def default_probes(run_dir: Path, *, seeds: Sequence[int] = DEFAULT_SEEDS) -> list[Probe]:
    """The default probe set of a run, built from its concept and dataset (nothing is saved).

    Args:
        run_dir: a run folder with its ``run.json``.
        seeds: the seeds of every probe.

    Returns:
        The probes :func:`build_probes` makes for the run's first concept.

    Raises:
        FileNotFoundError, ValueError: no or a bad ``run.json`` (naming the file), or a run without
            a concept.
    """
    from lib_dbchar.train.run import load_run_spec

    spec = load_run_spec(run_dir)
    if not spec.concepts:
        raise ValueError(f"{Path(run_dir) / 'run.json'}: the run has no concept; it cannot be probed.")
    concept = spec.concepts[0]
    dataset_dir = resolve_dirs(concept, spec.project_dir, 0)[0]
    counts = dataset_tag_counts(dataset_dir) if dataset_dir.is_dir() else {}
    traits = character_traits(spec.project_dir, dataset_dir=dataset_dir, token=concept.instance_token)
    return build_probes(concept, traits, counts, seeds=seeds)


def probes_for_run(run_dir: Path, *, seeds: Sequence[int] = DEFAULT_SEEDS) -> list[Probe]:
    """The run's saved probes, or the :func:`default_probes` (then saved, so the user can edit them).

    Args:
        run_dir: a run folder with its ``run.json``.
        seeds: the seeds of a newly built set.

    Returns:
        The probes (a saved set is returned as the user left it).

    Raises:
        FileNotFoundError, ValueError: no or a bad ``run.json`` / ``probes.json`` (naming the file).
    """
    saved = load_probes(run_dir)
    if saved is not None:
        return saved
    probes = default_probes(run_dir, seeds=seeds)
    save_probes(run_dir, probes)
    return probes
