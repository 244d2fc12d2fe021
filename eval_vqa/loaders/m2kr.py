"""M2KR (PreFLMR) parquet: ``<TASK>_data`` queries and ``<TASK>_passages`` passages.

Layout as on the Hugging Face hub: ``<data_dir>/<TASK>_data/<split>-*.parquet`` with columns
``question_id, question, img_path, instruction, answers, pos_item_ids`` and
``<data_dir>/<TASK>_passages/<split>_passages-*.parquet`` with ``passage_id, passage_content``.
``img_path`` is relative to ``images`` (a folder you download separately). The instruction is kept
in ``meta["instruction"]``; ``pos_item_ids`` are the gold passage ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .base import DatasetFormatError, VQADataset, VQAQuery, as_answer_list, check_columns

DATA_COLUMNS = ("question_id", "question", "img_path", "instruction", "answers", "pos_item_ids")
PASSAGE_COLUMNS = ("passage_id", "passage_content")


def _parquet_files(folder: Path, split: str, what: str) -> list[Path]:
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise DatasetFormatError(f"M2KR {what} not found: {folder} (expected a folder of parquet files)")
    files = sorted(folder.glob(f"{split}-*.parquet")) or sorted(folder.glob(f"{split}*.parquet"))
    if not files:
        found = sorted(p.name for p in folder.glob("*.parquet"))
        raise DatasetFormatError(f"{folder}: no parquet files for split {split!r}; found {found}")
    return files


def _read(files: list[Path], columns: tuple[str, ...]):
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as exc:
            raise DatasetFormatError(f"{f}: not a readable parquet file ({exc})") from exc
        check_columns(f, names, columns)
        tables.append(pq.read_table(f, columns=list(columns)))
    return tables


def iter_m2kr_passages(files: list[Path]) -> Iterator[tuple[str, str]]:
    for table in _read(files, PASSAGE_COLUMNS):
        for pid, text in zip(table.column("passage_id").to_pylist(), table.column("passage_content").to_pylist()):
            yield str(pid), text


def load_m2kr(
    data_dir: str | Path,
    task: str = "OKVQA",
    split: str = "test",
    images: str = "images",
    passages_split: str | None = None,
) -> VQADataset:
    """One M2KR task: queries of ``split`` and the passages of ``passages_split`` (default ``<split>_passages``)."""
    data_dir = Path(data_dir)
    data_files = _parquet_files(data_dir / f"{task}_data", split, f"{task}_data")
    passage_files = _parquet_files(data_dir / f"{task}_passages", passages_split or f"{split}_passages", f"{task}_passages")
    _read(passage_files[:1], PASSAGE_COLUMNS)  # fail early on wrong columns
    images_dir = data_dir / images
    queries = []
    for f, table in zip(data_files, _read(data_files, DATA_COLUMNS)):
        for row_no, row in enumerate(table.to_pylist()):
            where = f"row {row_no}"
            img = row["img_path"]
            queries.append(
                VQAQuery(
                    qid=str(row["question_id"]),
                    question=row["question"],
                    image=(images_dir / img) if img else None,
                    answers=as_answer_list(row["answers"], f, where),
                    gold_doc_ids=[str(p) for p in (row["pos_item_ids"] or [])],
                    meta={"instruction": row["instruction"]},
                    source=f"{f}: {where}",
                )
            )
    return VQADataset(f"m2kr-{task}", queries, lambda: iter_m2kr_passages(passage_files), f"M2KR {task} {split}")
