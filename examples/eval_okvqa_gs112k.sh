#!/usr/bin/env bash
# Evaluate GeMKR and the baselines on OKVQA-GS112K (paper Table: P@5 49.1 / R@5 78.6 / R@10 86.2 with
# LLaMA-7B + ViT-L/14). Needs the data (not shipped) and, for sensible speed, a GPU.
#
# Expected layout of $DATA (see eval_vqa/README.md; file names can be changed with --dataset-option):
#   $DATA/test.json                 DPR-style queries (question_id, img_id, question, answers, ctxs)
#   $DATA/okvqa_full_corpus.csv     the 112,724 passages, columns kid,text
#   $DATA/val2014/                  COCO val2014 images
# A trained GeMKR checkpoint (gemkr train --config ...; GeMKRModel.save_pretrained) goes in $CKPT.
set -euo pipefail
DATA=${DATA:?set DATA to the OKVQA-GS112K folder}
CKPT=${CKPT:-}
OUT=${OUT:-runs/okvqa-gs112k}

# 1. retrieval (the gemkr retriever builds the FM-index KB over the corpus once, with the LLM's
#    tokenizer, and caches it under $GEMKR_CACHE/kb): GeMKR (trained if CKPT is set, else zero-shot) next to BM25 and dense baselines
OPTS=(--option beams=20 --option groups=4 --option min_length=10 --option max_length=15 --option device=cuda)
[ -n "$CKPT" ] && OPTS+=(--option "checkpoint=$CKPT")
eval-vqa retrieval --dataset okvqa-gs112k --data-dir "$DATA" --retrievers gemkr,bm25,dense \
    --k 1 5 10 --tags classifier,ocr "${OPTS[@]}" --out "$OUT/retrieval"

# 2. end to end: retrieve 5 passages, answer with the reader, score VQA accuracy (leave-one-out)
eval-vqa e2e --dataset okvqa-gs112k --data-dir "$DATA" --retrievers gemkr,bm25 --answerer reader \
    --reader-k 5 "${OPTS[@]}" --out "$OUT/e2e"
