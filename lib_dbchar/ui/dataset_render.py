"""How the Dataset tab shows things: HTML for the run's results, the health report and the crop stage.

Plain functions from the core's results to escaped HTML strings (every file name comes from the
user and is escaped); no gradio here. Class names follow the page's ``dbchar-`` rule and are styled
in the ``/* dataset tab */`` section of ``style.css``; the crop stage's markup is what
``javascript/dbchar-crop.js`` binds to.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from lib_dbchar.dataset.crop import Box
from lib_dbchar.dataset.dedupe import DuplicatePair
from lib_dbchar.dataset.report import HealthReport
from lib_dbchar.ui.dataset_files import DatasetPicture

PREVIEW_QUALITY = 85  # JPEG quality of the nudge's preview: it is looked at, never trained on
NOTES_SHOWN = 50  # per-picture notes listed under the results before "and N more"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _div(css_class: str, body: str) -> str:
    return f'<div class="{css_class}">{body}</div>'


# --------------------------------------------------------------------------------------------------
# Results of a run


def _summary(report: Mapping[str, Any]) -> str:
    count = len(report.get("prepared", []))
    text = f"Prepared {count} picture{'s' if count != 1 else ''} into {report.get('dataset_dir', '')}"
    if report.get("seconds"):
        text += f" in {float(report['seconds']):.1f} s"
    lines = [f"<p>{_e(text)}.</p>"]
    if report.get("focal"):
        lines.append(f"<p>Focal crops: {_e(report['focal'])}</p>")
    if report.get("stopped"):
        lines.append(
            '<p class="dbchar-dataset-stopped">Stopped before the end: press Prepare again to finish '
            "(the finished pictures are kept).</p>"
        )
    return "".join(lines)


def _enlarged(prepared: Sequence[Mapping[str, Any]], upscaler: str | None) -> str:
    small = [p for p in prepared if p.get("upscale")]
    if not small:
        return ""
    how = f" with {_e(upscaler)}" if upscaler else ""
    items = "".join(
        f"<li><b>{_e(p['name'])}</b>: enlarged {float(p['upscale']):.2f}x{how} "
        f"(its square was {p['box'][2] - p['box'][0]} px)</li>"
        for p in small
    )
    return (
        f'<div class="dbchar-dataset-enlarged"><h4>Enlarged: smaller than the resolution ({len(small)})</h4>'
        f"<ul>{items}</ul><p>Enlarged pictures teach blur: use larger versions if you have them.</p></div>"
    )


def _skipped(skipped: Sequence[Mapping[str, Any]]) -> str:
    if not skipped:
        return ""
    rows = "".join(f"<tr><td>{_e(s['file'])}</td><td>{_e(s['reason'])}</td></tr>" for s in skipped)
    return (
        f'<div class="dbchar-dataset-skipped"><h4>Skipped ({len(skipped)})</h4>'
        f"<table><tr><th>File</th><th>Why, and what to do</th></tr>{rows}</table></div>"
    )


def _notes(prepared: Sequence[Mapping[str, Any]]) -> str:
    noted = [p for p in prepared if p.get("notes")]
    if not noted:
        return ""
    items = "".join(
        f"<li><b>{_e(p['name'])}</b> ({_e(p.get('method', ''))}): {_e('; '.join(p['notes']))}</li>"
        for p in noted[:NOTES_SHOWN]
    )
    more = f"<li>and {len(noted) - NOTES_SHOWN} more</li>" if len(noted) > NOTES_SHOWN else ""
    return f"<details><summary>Notes on {len(noted)} pictures</summary><ul>{items}{more}</ul></details>"


NOTHING_YET = "Nothing prepared yet: give a folder or upload pictures, then press Prepare."


def results_html(
    report: Mapping[str, Any] | None, upscaler: str | None = None, *, empty: str = NOTHING_YET
) -> str:
    """The last run's results: counts, enlarged pictures with their factor, skipped files with reasons.

    Args:
        report: a prep report as JSON values (``PrepResult.to_dict()`` or ``prep-report.json``),
            or ``None`` when the dataset was never prepared.
        upscaler: the upscaler that enlarged the small pictures, named beside their factor.
        empty: what to say when there is no report.

    Returns:
        Escaped HTML.
    """
    if not report:
        return _div("dbchar-dataset-results", f"<p>{_e(empty)}</p>")
    prepared = report.get("prepared", [])
    parts = [_summary(report), _enlarged(prepared, upscaler), _skipped(report.get("skipped", []))]
    if report.get("excluded"):
        parts.append(f"<p>Excluded earlier, not made again: {_e(', '.join(report['excluded']))}</p>")
    parts.append(_notes(prepared))
    return _div("dbchar-dataset-results", "".join(parts))


# --------------------------------------------------------------------------------------------------
# Health


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def _facts(report: HealthReport) -> list[tuple[str, str]]:
    """The report's facts as ``(label, plain text)`` rows (escaped by the caller)."""
    rows = [("Pictures", f"{report.count} (the guide uses about 20; under 15 or over 200 is flagged)")]
    small = [f"{s.name} {s.factor:.2f}x (square of {s.crop_side} px)" for s in report.too_small]
    rows.append(("Too small, enlarged", _names(small)))
    pairs = [f"{d.first} ~ {d.second} ({d.distance} bits apart)" for d in report.duplicates]
    rows.append(("Near-duplicates", _names(pairs)))
    rows.append(("Missing captions", f"{len(report.missing_captions)}: {_names(report.missing_captions)}"))
    if report.aspect:
        a = report.aspect
        rows.append(
            (
                "Shapes",
                f"{a.portrait} portrait, {a.square} square, {a.landscape} landscape "
                f"(width/height {a.narrowest:.2f} to {a.widest:.2f})",
            )
        )
    if report.resolution:
        r = report.resolution
        rows.append(
            (
                "Resolution",
                f"short sides {r.smallest_side} / {r.median_side} / {r.largest_side} px (smallest / median / "
                f"largest), {r.smallest_megapixels:.2f} to {r.largest_megapixels:.2f} MP",
            )
        )
    if report.poses:
        p = report.poses
        rows.append(
            (
                "Poses",
                f"of {p.tagged} captioned: from side {p.from_side}, from behind {p.from_behind}, "
                f"full body {p.full_body}, upper body {p.upper_body}",
            )
        )
    else:
        rows.append(("Poses", "not known until the pictures are tagged"))
    return rows


def health_html(report: HealthReport) -> str:
    """The dataset health report: the verdict, what to look at, and the facts behind it.

    Args:
        report: from :func:`lib_dbchar.dataset.report.dataset_health`.

    Returns:
        Escaped HTML; its outer class carries the level (``dbchar-health-good`` / ``-check`` / ``-empty``).
    """
    findings = "".join(
        f'<li class="dbchar-health-{_e(f.level)}"><b>{_e(f.level)}</b>: {_e(f.text)}</li>'
        for f in report.findings
    )
    facts = "".join(f"<tr><th>{_e(label)}</th><td>{_e(text)}</td></tr>" for label, text in _facts(report))
    return (
        f'<div class="dbchar-health dbchar-health-{_e(report.level)}">'
        f'<p class="dbchar-health-verdict">{_e(report.verdict)}</p>'
        f"<ul>{findings}</ul><table>{facts}</table></div>"
    )


# --------------------------------------------------------------------------------------------------
# Gallery, pairs and the crop stage


def gallery_caption(picture: DatasetPicture) -> str:
    """A picture's caption in the gallery: its name, flagged when enlarged or cropped by your box."""
    parts = [picture.name]
    if picture.upscale:
        parts.append(f"enlarged {picture.upscale:.2f}x")
    if picture.method == "your box":
        parts.append("your crop")
    if picture.flip:
        parts.append("+ mirrored")
    return " · ".join(parts)


def gallery_items(pictures: Sequence[DatasetPicture]) -> list[tuple[str, str]]:
    """The gallery's value: ``(file path, caption)`` per picture, in the given order."""
    return [(str(p.path), gallery_caption(p)) for p in pictures]


PAIR_JOINT = " ~ "


def pair_label(pair: DuplicatePair) -> str:
    """How a near-duplicate pair is listed: ``"a.png ~ b.png (3 bits apart)"``."""
    return f"{pair.first}{PAIR_JOINT}{pair.second} ({pair.distance} bits apart)"


def pair_names(label: str) -> list[tuple[str, str]]:
    """The ``(first, second)`` name splits a :func:`pair_label` allows, most likely first.

    A file name may itself contain " ~ ", so every split is offered; the caller keeps the one whose
    files exist.
    """
    names = label.rsplit(" (", 1)[0]
    parts = names.split(PAIR_JOINT)
    return [(PAIR_JOINT.join(parts[:i]), PAIR_JOINT.join(parts[i:])) for i in range(1, len(parts))]


def box_text(picture: str, box: Box) -> str:
    """The crop box as the hidden textbox holds it: JSON ``{"picture", "x", "y", "side"}``.

    The same shape ``javascript/dbchar-crop.js`` writes after every drag or key press.
    """
    return json.dumps({"picture": picture, "x": box[0], "y": box[1], "side": box[2] - box[0]})


def jpeg_data_uri(image: Any, quality: int = PREVIEW_QUALITY) -> str:
    """A PIL image as a ``data:image/jpeg;base64,...`` URI (for an ``<img>`` inside HTML)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def stage_html(
    picture: str,
    preview_uri: str,
    size: tuple[int, int],
    box: Box,
    *,
    min_side: int,
    target_id: str,
    caption: str = "",
) -> str:
    """The crop nudge: the original with the square over it, for ``dbchar-crop.js`` to make movable.

    The square's geometry travels in ``data-`` attributes in the ORIGINAL's pixels, so the preview
    may be any smaller size: the script scales by the displayed width.

    Args:
        picture: the dataset picture's name (the box is stored under it).
        preview_uri: the original, reduced, as a data URI.
        size: the original's upright ``(width, height)``.
        box: the square to start from, ``(left, top, right, bottom)`` in the original's pixels.
        min_side: the smallest square the user may make (px of the original).
        target_id: the element id of the textbox the script writes the box into.
        caption: a line under the picture (how the square was chosen).

    Returns:
        HTML.
    """
    width, height = size
    side = box[2] - box[0]
    data = {
        "picture": picture,
        "width": width,
        "height": height,
        "x": box[0],
        "y": box[1],
        "side": side,
        "min": max(1, min(min_side, width, height)),
        "target": target_id,
    }
    attrs = " ".join(f'data-{k}="{_e(v)}"' for k, v in data.items())
    corners = "".join(
        f'<span class="dbchar-crop-handle dbchar-crop-{c}" data-corner="{c}"></span>'
        for c in ("nw", "ne", "sw", "se")
    )
    return (
        f'<div class="dbchar-crop-stage" tabindex="0" {attrs} '
        f'title="Drag the square to move it, its corners to resize; arrow keys move, shift+arrows resize">'
        f'<img class="dbchar-crop-image" src="{preview_uri}" alt="{_e(picture)}: the original" '
        'draggable="false">'
        f'<div class="dbchar-crop-square">{corners}</div></div>'
        f'<div class="dbchar-crop-info">{_e(caption)}</div>'
    )


def empty_stage(text: str) -> str:
    """What the nudge shows when no picture is open (a short instruction or a problem)."""
    return _div("dbchar-crop-empty", f"<p>{_e(text)}</p>")
