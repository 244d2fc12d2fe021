"""GeMKR's instruction JSON: a list of ``{"input", "output", "image"}`` records.

``input`` is the question (GeMKR prepends nothing else), ``output`` the target knowledge clue or
passage text, ``image`` an image file name relative to the images folder. Answers and gold ids are
optional extra fields (``answers``/``answer``, ``doc_id``/``kid``/``gold_doc_ids``); the target text is
kept in ``meta["target"]``. Pair it with a corpus (GS112K CSV by default).
"""

from __future__ import annotations

from pathlib import Path

from .base import VQADataset, VQAQuery, as_answer_list, pick_key, require_dir, require_file
from .okvqa import iter_gs112k_corpus, read_json_records


def load_gemkr_queries(path: str | Path, images_dir: str | Path) -> list[VQAQuery]:
    path = require_file(path, "GeMKR {input, output, image} JSON")
    images_dir = Path(images_dir)
    queries = []
    for i, rec in enumerate(read_json_records(path)):
        where = f"record {i}"
        for key in ("input", "output", "image"):
            pick_key(rec, (key,), path, where)
        gold = rec.get("gold_doc_ids", rec.get("doc_id", rec.get("kid")))
        gold_ids = [str(g) for g in gold] if isinstance(gold, list) else ([] if gold is None else [str(gold)])
        answers = rec.get("answers", rec.get("answer"))
        queries.append(
            VQAQuery(
                qid=str(rec.get("question_id", rec.get("id", i))),
                question=rec["input"],
                image=images_dir / str(rec["image"]),
                answers=as_answer_list(answers, path, where),
                gold_doc_ids=gold_ids,
                meta={"target": rec["output"]},
                source=f"{path}: {where}",
            )
        )
    return queries


def load_gemkr_json(
    data_dir: str | Path,
    queries: str = "test.json",
    corpus: str = "okvqa_full_corpus.csv",
    images: str = "val2014",
) -> VQADataset:
    """GeMKR-format queries with a ``kid,text`` corpus CSV."""
    data_dir = Path(data_dir)
    corpus_path = require_file(data_dir / corpus, "corpus CSV")
    require_dir(data_dir / images, "images folder")
    qs = load_gemkr_queries(data_dir / queries, data_dir / images)
    return VQADataset("gemkr-json", qs, lambda: iter_gs112k_corpus(corpus_path), "GeMKR {input,output,image} JSON")
