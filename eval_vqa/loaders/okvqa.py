"""OK-VQA with the GS112K corpus (``kid,text`` CSV) or the WK21M corpus (DPR ``psgs_w100.tsv``).

Queries are DPR-style JSON: a list (or ``{"data": [...]}``) of records with ``question_id``,
``img_id`` (the COCO image number), ``question``, ``answers`` and optionally ``ctxs`` /
``positive_ctxs``. Images are COCO val2014 files ``COCO_val2014_{img_id:012d}.jpg`` in one folder.

OK-VQA has no gold passages: retrieval is scored by pseudo-relevance (answers in the passage). When
records carry ``positive_ctxs`` their ids become ``gold_doc_ids``; retrieved ``ctxs`` are not gold.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from .base import (
    DatasetFormatError,
    VQADataset,
    VQAQuery,
    as_answer_list,
    iter_csv_corpus,
    pick_key,
    require_dir,
    require_file,
)


def coco_image_name(img_id: int | str, split: str = "val2014") -> str:
    """COCO file name for an image id: ``coco_image_name(397133) == "COCO_val2014_000000397133.jpg"``."""
    text = str(img_id)
    if text.endswith(".jpg"):
        return text
    try:
        number = int(text)
    except ValueError:
        raise DatasetFormatError(f"img_id must be a COCO image number, got {img_id!r}") from None
    return f"COCO_{split}_{number:012d}.jpg"


def read_json_records(path: Path) -> list[dict]:
    """A JSON list of records, or the list under ``"data"``; errors name the file."""
    try:
        with path.open(encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}: not valid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetFormatError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
    return data


def load_dpr_queries(path: str | Path, images_dir: str | Path, image_split: str = "val2014") -> list[VQAQuery]:
    """Read DPR-style OK-VQA query records into :class:`VQAQuery` objects (images are not opened)."""
    path = require_file(path, "OK-VQA query JSON")
    images_dir = Path(images_dir)
    queries = []
    for i, rec in enumerate(read_json_records(path)):
        where = f"record {i}"
        for key in ("question", "answers", "img_id"):
            pick_key(rec, (key,), path, where)
        qid = str(rec.get("question_id", rec.get("id", i)))
        gold = [str(c["id"]) for c in rec.get("positive_ctxs", []) if isinstance(c, dict) and "id" in c]
        queries.append(
            VQAQuery(
                qid=qid,
                question=rec["question"],
                image=images_dir / coco_image_name(rec["img_id"], image_split),
                answers=as_answer_list(rec["answers"], path, where),
                gold_doc_ids=gold,
                meta={"img_id": rec["img_id"]},
                source=f"{path}: {where}",
            )
        )
    return queries


def iter_gs112k_corpus(path: str | Path) -> Iterator[tuple[str, str]]:
    """Stream the GS112K corpus CSV (header ``kid,text``)."""
    return iter_csv_corpus(require_file(path, "GS112K corpus CSV"), id_columns=("kid",), text_columns=("text",))


def iter_psgs_w100(path: str | Path, with_title: bool = True) -> Iterator[tuple[str, str]]:
    """Stream DPR's ``psgs_w100.tsv`` (header ``id, text, title``); the title prefixes the text."""
    return iter_csv_corpus(
        require_file(path, "WK21M passages TSV"), id_columns=("id",), text_columns=("text",),
        delimiter="\t", title_column="title" if with_title else None,
    )


def load_okvqa_gs112k(
    data_dir: str | Path,
    queries: str = "test.json",
    corpus: str = "okvqa_full_corpus.csv",
    images: str = "val2014",
) -> VQADataset:
    """OK-VQA queries with the 112,724-passage GS112K corpus (file names relative to ``data_dir``)."""
    data_dir = Path(data_dir)
    corpus_path = require_file(data_dir / corpus, "GS112K corpus CSV")
    require_dir(data_dir / images, "COCO images folder")
    qs = load_dpr_queries(data_dir / queries, data_dir / images)
    return VQADataset("okvqa-gs112k", qs, lambda: iter_gs112k_corpus(corpus_path),
                      "OK-VQA + GS112K corpus; pseudo-relevance")


def load_okvqa_wk21m(
    data_dir: str | Path,
    queries: str = "test.json",
    corpus: str = "psgs_w100.tsv",
    images: str = "val2014",
) -> VQADataset:
    """OK-VQA queries with the 21M-passage Wikipedia corpus (DPR ``psgs_w100.tsv``), streamed."""
    data_dir = Path(data_dir)
    corpus_path = require_file(data_dir / corpus, "WK21M passages TSV")
    require_dir(data_dir / images, "COCO images folder")
    qs = load_dpr_queries(data_dir / queries, data_dir / images)
    return VQADataset("okvqa-wk21m", qs, lambda: iter_psgs_w100(corpus_path),
                      "OK-VQA + WK21M corpus; pseudo-relevance")
