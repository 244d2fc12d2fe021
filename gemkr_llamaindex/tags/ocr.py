"""Words read from the photo (signs, logos, captions) with RapidOCR on onnxruntime, fully offline.

``rapidocr`` ships its PP-OCR detection, orientation and recognition ONNX models inside the wheel; we
pass their paths explicitly so the engine never tries its download path. OCR on natural photos reads
garbage as well as words, so lines below a score threshold and tokens shorter than three characters
are dropped, and the boxes of one text block (``cero`` above ``emisiones`` on a bus) are merged
into one phrase.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gemkr_llamaindex.tags.base import TAGS_EXTRA_HINT, VisualTagger, require
from gemkr_llamaindex.tags.tag import Tag, tag_key

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

_STRIP = string.punctuation + "«»“”‘’„¡¿·•…–—|"


@dataclass(frozen=True)
class OcrLine:
    """One detected text box: corner points ``[(x, y), ...]``, recognised text and its score."""

    box: tuple[tuple[float, float], ...]
    text: str
    score: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        xs = [p[0] for p in self.box]
        ys = [p[1] for p in self.box]
        return min(xs), min(ys), max(xs), max(ys)


def clean_tokens(text: str, min_chars: int) -> list[str]:
    """Whitespace tokens, surrounding punctuation stripped, kept if ``min_chars`` long and alphanumeric."""
    kept = []
    for raw in text.split():
        token = raw.strip(_STRIP)
        if len(token) >= min_chars and any(ch.isalnum() for ch in token):
            kept.append(token)
    return kept


def _same_block(a: OcrLine, b: OcrLine) -> bool:
    """Side by side on one row, or stacked lines of one paragraph, with small gaps."""
    ax0, ay0, ax1, ay1 = a.bounds
    bx0, by0, bx1, by1 = b.bounds
    ha, hb = ay1 - ay0, by1 - by0
    h = max(1.0, min(ha, hb))
    v_overlap = min(ay1, by1) - max(ay0, by0)
    h_overlap = min(ax1, bx1) - max(ax0, bx0)
    if v_overlap >= 0.5 * h:  # same row: horizontal gap at most about one character height
        return -h_overlap <= 1.0 * max(ha, hb)
    narrower = max(1.0, min(ax1 - ax0, bx1 - bx0))
    return h_overlap >= 0.5 * narrower and -v_overlap <= 0.5 * max(ha, hb)


def _reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    by_y = sorted(lines, key=lambda ln: (ln.bounds[1] + ln.bounds[3]) / 2)
    rows: list[list[OcrLine]] = []
    for line in by_y:
        y_mid = (line.bounds[1] + line.bounds[3]) / 2
        if rows:
            first = rows[-1][0]
            first_mid = (first.bounds[1] + first.bounds[3]) / 2
            if abs(y_mid - first_mid) <= 0.5 * (first.bounds[3] - first.bounds[1]):
                rows[-1].append(line)
                continue
        rows.append([line])
    return [ln for row in rows for ln in sorted(row, key=lambda ln: ln.bounds[0])]


def lines_to_tags(
    lines: Sequence[OcrLine],
    *,
    min_score: float = 0.85,
    min_chars: int = 3,
    merge_lines: bool = True,
    max_block_words: int = 8,
) -> list[Tag]:
    """Text tags from raw OCR lines: filter by score and token length, merge blocks, deduplicate.

    A merged tag's score is the lowest score among its lines. A block longer than ``max_block_words``
    (a paragraph, a page) stays split into its lines: a hint should be a phrase, not a text. Tags come
    best first; equal scores keep reading order.
    """
    kept = []
    for line in lines:
        if line.score < min_score:
            continue
        tokens = clean_tokens(line.text, min_chars)
        if tokens:
            kept.append(OcrLine(line.box, " ".join(tokens), float(line.score)))
    groups: list[list[OcrLine]]
    if merge_lines and len(kept) > 1:
        parent = list(range(len(kept)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in range(len(kept)):
            for j in range(i + 1, len(kept)):
                if _same_block(kept[i], kept[j]):
                    parent[find(i)] = find(j)
        by_root: dict[int, list[OcrLine]] = {}
        for i, line in enumerate(kept):
            by_root.setdefault(find(i), []).append(line)
        groups = []
        for group in by_root.values():
            if sum(len(ln.text.split()) for ln in group) <= max_block_words:
                groups.append(group)
            else:
                groups.extend([ln] for ln in group)
    else:
        groups = [[line] for line in kept]
    groups.sort(key=lambda g: min((ln.bounds[1], ln.bounds[0]) for ln in g))  # reading order of blocks
    best: dict[str, Tag] = {}
    for group in groups:
        ordered = _reading_order(group)
        tag = Tag(" ".join(ln.text for ln in ordered), min(ln.score for ln in group), "text")
        key = tag_key(tag.text)
        if key not in best or tag.score > best[key].score:
            best[key] = tag
    return sorted(best.values(), key=lambda t: -t.score)


def packaged_model_paths() -> dict[str, Path]:
    """The detection / orientation / recognition ONNX files shipped inside the ``rapidocr`` wheel."""
    pkg = require("rapidocr", "ocr")
    models = Path(pkg.__file__).resolve().parent / "models"
    found: dict[str, Path] = {}
    for task in ("det", "cls", "rec"):
        candidates = sorted(models.glob(f"*{task}*.onnx"))
        if not candidates:
            raise FileNotFoundError(
                f"rapidocr ships no {task} model in {models}; reinstall the tags extra: {TAGS_EXTRA_HINT}"
            )
        found[task] = candidates[-1]
    return found


class OCRTagger(VisualTagger):
    """RapidOCR text as tags (kind ``"text"``).

    Args:
        min_score: drop recognised lines scored below this.
        min_chars: drop tokens shorter than this (after stripping punctuation).
        merge_lines: join boxes of one text block into one phrase.
        max_block_words: blocks with more words than this stay split into lines.
        use_orientation: run the 0/180-degree text-orientation classifier (slower, rarely needed).
        cache: see :class:`VisualTagger`.
    """

    name = "ocr"
    batch_size = 4

    def __init__(
        self,
        *,
        min_score: float = 0.85,
        min_chars: int = 3,
        merge_lines: bool = True,
        max_block_words: int = 8,
        use_orientation: bool = True,
        cache: bool | str | Path | None = True,
    ) -> None:
        super().__init__(cache=cache)
        require("onnxruntime", self.name)
        self.models = packaged_model_paths()
        self.min_score = min_score
        self.min_chars = min_chars
        self.merge_lines = merge_lines
        self.max_block_words = max_block_words
        self.use_orientation = use_orientation
        self._engine = None

    @property
    def cache_key(self) -> str:
        models = "+".join(p.stem for p in self.models.values()).replace("_", "-")
        flags = (
            f"s{self.min_score:g}-c{self.min_chars}-m{int(self.merge_lines)}w{self.max_block_words}"
            f"-o{int(self.use_orientation)}"
        )
        return f"ocr-{models}-{flags}"

    @property
    def is_loaded(self) -> bool:
        return self._engine is not None

    @property
    def engine(self):
        """The RapidOCR engine, built on first use from the packaged model files."""
        if self._engine is None:
            rapidocr = require("rapidocr", self.name)
            params = {
                "Global.log_level": "error",
                "Global.use_cls": self.use_orientation,
                "Global.text_score": min(0.5, self.min_score),  # we filter ourselves, see lines_to_tags
                "Det.model_path": str(self.models["det"]),
                "Cls.model_path": str(self.models["cls"]),
                "Rec.model_path": str(self.models["rec"]),
            }
            self._engine = rapidocr.RapidOCR(params=params)
        return self._engine

    def read_lines(self, image: Image.Image) -> list[OcrLine]:
        """Raw OCR lines of one RGB image, unfiltered."""
        import numpy as np

        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])  # the engine wants BGR
        result = self.engine(bgr)
        if result.boxes is None or result.txts is None:
            return []
        return [
            OcrLine(tuple((float(x), float(y)) for x, y in box), str(text), float(score))
            for box, text, score in zip(result.boxes, result.txts, result.scores)
        ]

    def _tag_images(self, images: Sequence[Image.Image]) -> list[list[Tag]]:
        return [
            lines_to_tags(
                self.read_lines(img),
                min_score=self.min_score,
                min_chars=self.min_chars,
                merge_lines=self.merge_lines,
                max_block_words=self.max_block_words,
            )
            for img in images
        ]
