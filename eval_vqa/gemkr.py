"""The ``gemkr`` evaluation retriever: GeMKR over a KB of the evaluated corpus (built once, cached)."""

from __future__ import annotations


def gemkr_retriever(docs: list, o: dict):
    """GeMKR over a KB of the corpus (built once per corpus and tokenizer, cached).

    Zero-shot with the packaged SmolLM2 unless ``--option checkpoint=DIR`` names a trained GeMKR model.
    Decoding options: ``beams``, ``groups``, ``min_length``, ``max_length``, ``constraint``.
    """
    import hashlib

    from gemkr_llamaindex.assets import cache_dir
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.kb import IndexFormatError, KnowledgeBase
    from gemkr_llamaindex.llamaindex import ClueGenerator, GeMKRRetriever

    cfg = DecodingConfig(num_beams=int(o.get("beams", 20)), num_groups=int(o.get("groups", 4)),
                         min_length=int(o.get("min_length", 10)), max_length=int(o.get("max_length", 15)),
                         constraint=o.get("constraint", "topk"))
    checkpoint = o.get("checkpoint")
    if checkpoint:
        from gemkr_llamaindex.model.gemkr import GeMKRModel

        model = GeMKRModel.from_pretrained(checkpoint, device=o.get("device", "cpu"))
        tokenizer = model.tokenizer
    else:
        from gemkr_llamaindex.assets import load_tokenizer

        tokenizer = load_tokenizer(o.get("llm", "smollm2"))
    key = hashlib.sha256()
    key.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    for doc_id, text in docs:
        key.update(doc_id.encode() + b"\0" + hashlib.sha256(text.encode()).digest())
    path = cache_dir() / "kb" / f"eval-{key.hexdigest()[:16]}"
    try:
        kb = KnowledgeBase.open(path)
    except IndexFormatError:
        kb = KnowledgeBase.build(docs, tokenizer, path, overwrite=True, show_progress=o.get("progress", False))
    if checkpoint:
        gen = ClueGenerator(kb, model=model, config=cfg, batch_size=int(o.get("batch_size", 4)))
    else:
        gen = ClueGenerator.zero_shot_from(kb, o.get("llm", "smollm2"), config=cfg,
                                           batch_size=int(o.get("batch_size", 4)))
    return GeMKRRetriever(gen, similarity_top_k=o["top_k"])
