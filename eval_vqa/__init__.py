"""Evaluation of multimodal knowledge retrieval and knowledge-based VQA.

* :mod:`eval_vqa.metrics` - pseudo-relevance PRP/PRR@K (substring / word), gold-id P/R/Hit@K, MRR@K,
  VQA soft accuracy with the official answer normalisation, exact match.
* :mod:`eval_vqa.significance` / :mod:`eval_vqa.trec` - paired significance tests between a run's rows;
  TREC run and qrels files for trec_eval, ranx and ir_measures.
* :mod:`eval_vqa.loaders` - OK-VQA (GS112K, WK21M), GeMKR JSON, ReMuQ, M2KR, our JSONL, the mini benchmark.
* :mod:`eval_vqa.baselines` - BM25, dense text, CLIP image-to-text and late-interaction retrievers.
* :mod:`eval_vqa.runner` / :mod:`eval_vqa.cli` - resumable runs, reports and plots (``eval-vqa``).
* :mod:`eval_vqa.analysis` - a run's recall split by whether the query names its entity; dumped clues
  ranked again under another clue scoring.
* :mod:`eval_vqa.mini` / :mod:`gemkr_llamaindex.images` - the shipped mini benchmark and its packaged images.

Importing this package is cheap: submodules load torch, llama-index or models only when used.
"""

from gemkr_llamaindex.distribution import check_top_level

check_top_level(__name__)  # another distribution installing a top-level `eval_vqa` would overwrite ours
