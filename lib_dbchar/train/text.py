"""Prompts to text-encoder conditioning, as the webui does it: 75-token chunks, clip skip, emphasis.

CLIP reads 77 positions (start, 75 tokens, end). Longer prompts are cut into 75-token chunks, each
encoded on its own with start/end/padding, and the chunks' outputs are concatenated along the
sequence; the UNet's cross-attention takes any length. Prompts of one batch are padded to the same
number of chunks with empty chunks.

Clip skip ``n`` takes the ``n``-th hidden state from the end and applies the final layer norm (NAI
family models were trained on the second-to-last layer).

Emphasis ``(word:1.3)``, ``(word)`` = x1.1, ``[word]`` = /1.1 is parsed for sampling prompts
(class images, previews -- the guide's negative prompt uses it), never for training captions, where
``ganyu (genshin impact)`` is a tag, not emphasis. Weighted token embeddings are scaled and the
chunk's mean restored, so emphasis changes direction, not overall magnitude.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHUNK_TOKENS = 75
EMPHASIS_STEP = 1.1
_EMPHASIS = re.compile(r"\\[\\()\[\]]|\(|\)|\[|\]|:\s*([+-]?[.\d]+)\s*\)|[^\\()\[\]:]+|:|\\")


@dataclass(frozen=True)
class Tokenized:
    """Token ids of a batch of prompts, in whole chunks.

    Attributes:
        ids: ``[batch, chunks * 77]`` int64 token ids (start, 75 tokens, end per chunk).
        weights: ``[batch, chunks * 77]`` float32 emphasis per position (1.0 without emphasis).
        truncated: per prompt, how many tokens did not fit in the allowed chunks.
    """

    ids: Any
    weights: Any
    truncated: tuple[int, ...]

    @property
    def chunks(self) -> int:
        return self.ids.shape[1] // (CHUNK_TOKENS + 2)


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(text, weight)`` runs using the webui's emphasis syntax.

    ``(a)`` multiplies by 1.1, ``[a]`` divides by 1.1, ``(a:1.5)`` sets 1.5 (times the enclosing
    weight); ``\\(`` and ``\\)`` are literal brackets. Unbalanced brackets are closed at the end.

    Args:
        text: the prompt.

    Returns:
        Runs with their weights, adjacent runs of equal weight merged; ``[("", 1.0)]`` for an
        empty prompt.
    """
    runs: list[list[Any]] = []
    opened: dict[str, list[int]] = {"(": [], "[": []}
    for match in _EMPHASIS.finditer(text):
        piece, number = match.group(0), match.group(1)
        closed = _close(piece, number, opened)
        if piece.startswith("\\"):
            runs.append([piece[1:] or piece, 1.0])  # an escaped bracket is text
        elif piece in opened:
            opened[piece].append(len(runs))
        elif closed is not None:
            _scale(runs, *closed)
        else:
            runs.append([piece, 1.0])
    # Brackets left open apply to the end of the prompt, as in the webui.
    for start in opened["("]:
        _scale(runs, start, EMPHASIS_STEP)
    for start in opened["["]:
        _scale(runs, start, 1 / EMPHASIS_STEP)
    return _merge(runs)


def _close(piece: str, number: str | None, opened: dict[str, list[int]]) -> tuple[int, float] | None:
    """``(start run, factor)`` when ``piece`` closes an open bracket; ``None`` when it is text."""
    if number is not None and opened["("]:
        return opened["("].pop(), float(number)
    if piece == ")" and opened["("]:
        return opened["("].pop(), EMPHASIS_STEP
    if piece == "]" and opened["["]:
        return opened["["].pop(), 1 / EMPHASIS_STEP
    return None


def _scale(runs: list[list[Any]], start: int, factor: float) -> None:
    for run in runs[start:]:
        run[1] *= factor


def _merge(runs: list[list[Any]]) -> list[tuple[str, float]]:
    """Join adjacent runs of equal weight."""
    merged: list[tuple[str, float]] = []
    for piece, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def _token_runs(tokenizer: Any, prompt: str, emphasis: bool) -> tuple[list[int], list[float]]:
    runs = parse_emphasis(prompt) if emphasis else [(prompt, 1.0)]
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in runs:
        tokens = (
            tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
            if text.strip()
            else []
        )
        ids += tokens
        weights += [weight] * len(tokens)
    return ids, weights


def tokenize(
    tokenizer: Any, prompts: Sequence[str], *, max_chunks: int, emphasis: bool = False, min_chunks: int = 1
) -> Tokenized:
    """Tokenize prompts into padded 77-position chunks.

    Args:
        tokenizer: a ``CLIPTokenizer``.
        prompts: the batch's prompts.
        max_chunks: tokens past ``max_chunks * 75`` are dropped (and counted in ``truncated``).
        emphasis: parse the webui's emphasis syntax (sampling prompts only).
        min_chunks: pad every prompt to at least this many chunks (to match a negative prompt).

    Returns:
        The :class:`Tokenized` batch; all prompts have the same number of chunks.
    """
    import torch

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    per_prompt = [_token_runs(tokenizer, p, emphasis) for p in prompts]
    limit = max_chunks * CHUNK_TOKENS
    truncated = tuple(max(0, len(ids) - limit) for ids, _ in per_prompt)
    chunks = max([min_chunks] + [-(-min(len(ids), limit) // CHUNK_TOKENS) for ids, _ in per_prompt])
    all_ids, all_weights = [], []
    for ids, weights in per_prompt:
        row_ids: list[int] = []
        row_weights: list[float] = []
        for c in range(chunks):
            part = ids[c * CHUNK_TOKENS : min(limit, (c + 1) * CHUNK_TOKENS)]
            part_w = weights[c * CHUNK_TOKENS : min(limit, (c + 1) * CHUNK_TOKENS)]
            fill = CHUNK_TOKENS - len(part)
            # The end token always follows the text; padding fills the rest (SD1 pads with the end
            # token, SD2 with "!", whatever the tokenizer says).
            row_ids += [bos, *part, eos] + [pad] * fill
            row_weights += [1.0, *part_w, 1.0] + [1.0] * fill
        all_ids.append(row_ids)
        all_weights.append(row_weights)
    return Tokenized(
        torch.tensor(all_ids, dtype=torch.int64), torch.tensor(all_weights, dtype=torch.float32), truncated
    )


def final_layer_norm(text_encoder: Any) -> Any:
    """The text encoder's final layer norm (transformers 4.x nests it under ``text_model``, 5.x not)."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def encode(text_encoder: Any, tokens: Tokenized, *, clip_skip: int = 1, device: Any = None) -> Any:
    """Encode tokenized prompts chunk by chunk.

    Args:
        text_encoder: a ``CLIPTextModel``.
        tokens: from :func:`tokenize`.
        clip_skip: 1 = the last layer; 2 = the one before, with the final layer norm applied.
        device: where to run (default: the encoder's device).

    Returns:
        ``[batch, chunks * 77, hidden]`` hidden states in the encoder's dtype (or autocast's).
    """
    import torch

    device = device or next(text_encoder.parameters()).device
    width = CHUNK_TOKENS + 2
    outputs = []
    for c in range(tokens.chunks):
        ids = tokens.ids[:, c * width : (c + 1) * width].to(device)
        if clip_skip > 1:
            out = text_encoder(ids, output_hidden_states=True)
            hidden = final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])
        else:
            hidden = text_encoder(ids).last_hidden_state
        weights = tokens.weights[:, c * width : (c + 1) * width].to(device)
        if not bool(torch.all(weights == 1.0)):
            hidden = _apply_weights(hidden, weights)
        outputs.append(hidden)
    return torch.cat(outputs, dim=1)


def _apply_weights(hidden: Any, weights: Any) -> Any:
    """Scale each position by its weight, then restore the chunk's mean (the webui's way)."""
    original_mean = hidden.float().mean(dim=(1, 2), keepdim=True)
    scaled = hidden * weights.unsqueeze(-1).to(hidden.dtype)
    new_mean = scaled.float().mean(dim=(1, 2), keepdim=True)
    return (scaled * (original_mean / new_mean).to(hidden.dtype)).to(hidden.dtype)
