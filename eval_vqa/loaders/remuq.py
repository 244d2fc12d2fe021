"""ReMuQ: ``test.json`` queries (gold passage = ``ctxs[0]``), a CSV corpus, and images in a TSV.

Images live in ``imgs.tsv`` (one row per image: ``image_id<TAB>base64``) with ``imgs.lineidx`` (the
byte offset of each row, one integer per line) for random access, the layout of the Oscar/VinVL TSV
tools. :class:`TSVImageStore` maps ids to rows by reading only each row's key.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from PIL import Image

from .base import (
    DatasetFormatError,
    ImageLoadError,
    VQADataset,
    VQAQuery,
    as_answer_list,
    decode_image_bytes,
    iter_csv_corpus,
    pick_key,
    require_file,
)
from .okvqa import read_json_records


class TSVImageStore:
    """Random access to base64 images in ``imgs.tsv`` via the byte offsets in ``imgs.lineidx``."""

    def __init__(self, tsv: str | Path, lineidx: str | Path | None = None) -> None:
        self.tsv = require_file(tsv, "image TSV")
        self.lineidx = require_file(lineidx or self.tsv.with_suffix(".lineidx"), "image TSV line index")
        offsets = []
        for lineno, line in enumerate(self.lineidx.read_text().split(), 1):
            try:
                offsets.append(int(line))
            except ValueError:
                raise DatasetFormatError(f"{self.lineidx}:{lineno}: expected a byte offset, got {line!r}") from None
        self.offsets = offsets
        self._rows: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def _key_at(self, fh, offset: int) -> str:
        fh.seek(offset)
        head = fh.read(512)
        if b"\t" not in head:
            raise DatasetFormatError(f"{self.tsv}: row at byte {offset} has no TAB after its image id")
        return head.split(b"\t", 1)[0].decode("utf-8")

    def row_of(self, image_id: str) -> int:
        """Row number of ``image_id`` (the id index is built on first use, reading only row keys)."""
        if self._rows is None:
            with self.tsv.open("rb") as fh:
                self._rows = {self._key_at(fh, off): row for row, off in enumerate(self.offsets)}
        try:
            return self._rows[str(image_id)]
        except KeyError:
            raise ImageLoadError(f"image id {image_id!r} not found in {self.tsv}") from None

    def load(self, key: str | int) -> Image.Image:
        """Image by id (str) or row number (int)."""
        row = key if isinstance(key, int) else self.row_of(key)
        if not 0 <= row < len(self.offsets):
            raise ImageLoadError(f"row {row} out of range for {self.tsv} ({len(self.offsets)} rows)")
        with self.tsv.open("rb") as fh:
            fh.seek(self.offsets[row])
            line = fh.readline().rstrip(b"\r\n")
        parts = line.split(b"\t")
        if len(parts) < 2:
            raise ImageLoadError(f"{self.tsv}: row {row} has no base64 field")
        try:
            data = base64.b64decode(parts[-1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageLoadError(f"{self.tsv}: row {row} ({parts[0][:40]!r}): bad base64 ({exc})") from exc
        return decode_image_bytes(data, f"{self.tsv} row {row}")


def load_remuq(
    data_dir: str | Path,
    queries: str = "test.json",
    corpus: str = "open_corpus_195837.csv",
    images_tsv: str = "imgs.tsv",
    images_lineidx: str = "imgs.lineidx",
) -> VQADataset:
    """ReMuQ test queries; the gold doc id of each is the id of ``ctxs[0]``."""
    data_dir = Path(data_dir)
    q_path = require_file(data_dir / queries, "ReMuQ query JSON")
    corpus_path = require_file(data_dir / corpus, "ReMuQ corpus CSV")
    store = TSVImageStore(data_dir / images_tsv, data_dir / images_lineidx)
    out = []
    for i, rec in enumerate(read_json_records(q_path)):
        where = f"record {i}"
        q_key = pick_key(rec, ("question", "text"), q_path, where)
        a_key = pick_key(rec, ("answers", "answer"), q_path, where)
        img_key = pick_key(rec, ("image_id", "img_id", "image"), q_path, where)
        ctxs = rec.get("ctxs")
        if not ctxs or not isinstance(ctxs[0], dict) or "id" not in ctxs[0]:
            raise DatasetFormatError(f"{q_path}: {where}: needs 'ctxs' whose first entry has an 'id' (the gold passage)")
        image_id = rec[img_key]
        out.append(
            VQAQuery(
                qid=str(rec.get("question_id", rec.get("id", i))),
                question=rec[q_key],
                image=(lambda image_id=image_id: store.load(str(image_id))),
                answers=as_answer_list(rec[a_key], q_path, where),
                gold_doc_ids=[str(ctxs[0]["id"])],
                meta={"image_id": image_id},
                source=f"{q_path}: {where}",
            )
        )
    return VQADataset("remuq", out, lambda: iter_csv_corpus(corpus_path), "ReMuQ; gold = ctxs[0]")
