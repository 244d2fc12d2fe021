"""Settings of knowledge-guided constrained decoding (paper: §Knowledge-guided Constraint Decoding).

This is the one source of decoding defaults: the ``gemkr retrieve`` CLI, the evaluation's ``gemkr``
retriever and the demo all start from :class:`DecodingConfig` (``from_options`` reads ``key=value``
overrides), and a trained checkpoint may carry its own (``decoding.json`` beside its weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, get_type_hints

from gemkr_llamaindex.config_fields import check_fields, parse_text

CONSTRAINT_MODES = ("topk", "mask")
DOC_SCORES = ("max", "logsumexp")
EVIDENCE_SOURCES = ("clues", "beams", "query", "inflections", "unigrams")  # see gemkr_llamaindex.decoding.evidence
#: Named ways to rank, applied over a config by :meth:`DecodingConfig.with_scoring`: the paper's clue
#: scoring; SEAL's published aggregation (alpha 2, beta 0.8, every n-gram at full weight) over the search's
#: clues and the query's n-grams; and the fast mode, the query's words and their inflections alone (no beam
#: search).
SCORINGS: dict[str, dict[str, Any]] = {
    "paper": {"evidence": ""},
    "seal": {"evidence": "clues,query", "evidence_alpha": 2.0, "evidence_beta": 0.8, "evidence_generated_weight": 1.0},
    "fast": {"evidence": "query,inflections"},
}
ANCHOR_MODES = ("any", "doc_start", "mixed")


@dataclass
class DecodingConfig:
    """Diverse constrained beam search.

    Defaults follow the paper's evaluation (20 beams in 4 groups, clues of 10-15 tokens); GeMKR's
    released evaluation used 10 beams in 10 groups with a diversity penalty of 0.5.

    * ``min_length`` / ``max_length``: l_min and l_max in tokens. A beam stops as soon as it has at least
      ``min_length`` tokens and its clue occurs in exactly one document (ValidDistinct), or at
      ``max_length``; clues that still map to several documents then are dropped. A clue may also end at
      a document's end whatever its length (``allow_doc_end``; scored with the model's EOS token).
    * ``length_penalty``: a clue's score is ``sum log p / len ** length_penalty``.
    * ``diversity_penalty``: Hamming diversity between groups (subtracted per earlier-group use of a token
      at the same step). It only steers the search; reported scores are the model's log-probabilities.
    * ``anchor``: where clues may start: ``"any"`` position (the paper), ``"doc_start"`` (the first token
      of a document: GENRE-style entity generation, since a titled passage, DPR's ``"{title}. {text}"``,
      opens with its title and a Wikipedia-like document's first words name its entity), or ``"mixed"``
      (the first half of the groups anchored, the others free).
    * ``prior_weight``: 0 ranks by the paper's clue likelihood. w > 0 ranks by a prior-calibrated score,
      ``(log p(c | query) - w log p(c | empty query)) / len ** length_penalty`` (PMI-style), which demotes
      generic openings that are likely whatever the question; it costs one batched scoring pass (skipped
      under evidence scoring, which ranks by n-gram weights instead).
    * ``constraint``: ``"topk"`` checks the model's best tokens against the KB in descending order until
      each beam has the 2 x group-size allowed tokens beam search can use (exact, and cheap when a prefix
      has thousands of continuations); ``"mask"`` lists every continuation and masks the vocabulary.
      Both give identical results; see ``benchmarks/retrieval_latency.py`` for their cost. In ``"topk"``
      mode a beam whose prefix occurs at most ``enumerate_below`` times (so has few continuations), or
      whose best ``topk_candidates`` tokens hold too few allowed ones, has its continuations listed.
    * ``doc_score``: a document's score is its best clue's (``"max"``) or the log-sum-exp over its clues.
    * ``evidence``: ``""`` ranks documents by their clues as above (the paper). A comma-separated list of
      sources (``clues``, ``beams``, ``query``, ``inflections``, ``unigrams``) ranks them by the summed weight of every
      LM-scored n-gram they contain instead (SEAL-style; :mod:`gemkr_llamaindex.decoding.evidence`), with
      ``evidence_alpha``, ``evidence_beta``, ``evidence_smoothing`` and ``evidence_max_count`` as there;
      ``evidence_generated_weight`` multiplies the weights of n-grams the model generated (``clues``,
      ``beams``) against the query's own; ``evidence_unigram_top`` first tokens are scored for
      ``unigrams``; ``evidence_whole_words`` keeps only generated n-grams that end where a word ends and
      counts only the occurrences that end a word in the KB (so "Cat" is not found in "Catfish").
      Without ``clues``/``beams`` no beam search runs.
    """

    #: Short names ``from_options`` accepts for two fields (``beams=20 groups=4``).
    ALIASES: ClassVar[dict[str, str]] = {"beams": "num_beams", "groups": "num_groups"}

    num_beams: int = 20
    num_groups: int = 4
    diversity_penalty: float = 0.5
    min_length: int = 10
    max_length: int = 15
    length_penalty: float = 1.0
    stop_when_unique: bool = True
    allow_doc_end: bool = True
    anchor: str = "any"
    prior_weight: float = 0.0
    constraint: str = "topk"
    topk_candidates: int = 64
    enumerate_below: int = 256
    doc_score: str = "max"
    evidence: str = ""
    evidence_alpha: float = 2.0
    evidence_beta: float = 0.8
    evidence_smoothing: float = 5.0
    evidence_max_count: int = 1500
    evidence_generated_weight: float = 1.0
    evidence_unigram_top: int = 1000
    evidence_whole_words: bool = True

    def __post_init__(self) -> None:
        check_fields(self)  # types and finite numbers first, naming the key (a JSON 4.0, null or NaN)
        if self.num_beams < 1 or self.num_groups < 1 or self.num_beams % self.num_groups:
            raise ValueError(f"num_beams ({self.num_beams}) must be a positive multiple of num_groups ({self.num_groups})")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length ({self.min_length}) <= max_length ({self.max_length})")
        if self.constraint not in CONSTRAINT_MODES:
            raise ValueError(f"constraint must be one of {CONSTRAINT_MODES}, got {self.constraint!r}")
        if self.doc_score not in DOC_SCORES:
            raise ValueError(f"doc_score must be one of {DOC_SCORES}, got {self.doc_score!r}")
        if self.anchor not in ANCHOR_MODES:
            raise ValueError(f"anchor must be one of {ANCHOR_MODES}, got {self.anchor!r}")
        if self.topk_candidates < 1 or self.enumerate_below < 0:
            raise ValueError("topk_candidates must be >= 1 and enumerate_below >= 0")
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {self.prior_weight}")
        unknown = [s for s in self.evidence_sources if s not in EVIDENCE_SOURCES]
        if unknown:
            raise ValueError(f"unknown evidence source(s) {unknown}; valid: {list(EVIDENCE_SOURCES)} (comma-separated)")
        if self.evidence_alpha <= 0 or not 0 <= self.evidence_beta <= 1 or self.evidence_smoothing <= 0:
            raise ValueError("need evidence_alpha > 0, 0 <= evidence_beta <= 1 and evidence_smoothing > 0")
        if self.evidence_max_count < 1 or self.evidence_unigram_top < 1 or self.evidence_generated_weight < 0:
            raise ValueError("need evidence_max_count >= 1, evidence_unigram_top >= 1, evidence_generated_weight >= 0")

    @property
    def evidence_sources(self) -> tuple[str, ...]:
        """The evidence sources in use (empty: the paper's clue scoring)."""
        return tuple(dict.fromkeys(s.strip() for s in self.evidence.split(",") if s.strip()))

    @property
    def runs_search(self) -> bool:
        """Whether ranking needs the constrained beam search (clue scoring, or generated evidence)."""
        return not self.evidence_sources or any(s in ("clues", "beams") for s in self.evidence_sources)

    @property
    def group_size(self) -> int:
        return self.num_beams // self.num_groups

    def group_anchors(self) -> list[str]:
        """The KB anchor of each group's clues (``"any"`` or ``"doc_start"``)."""
        if self.anchor == "mixed":
            anchored = (self.num_groups + 1) // 2
            return ["doc_start"] * anchored + ["any"] * (self.num_groups - anchored)
        return [self.anchor] * self.num_groups

    def clue_score(self, logprob: float, length: int, prior_logprob: float | None = None) -> float:
        """A finished clue's ranking score: ``(log p(c | q) - w log p(c | empty query)) / len ** lp``, the
        paper's ``log p / len ** lp`` when ``prior_weight`` is 0 (the prior is then not needed)."""
        if self.prior_weight > 0:
            if prior_logprob is None:
                raise ValueError("prior_weight > 0 needs the clue's prior log-likelihood")
            logprob = logprob - self.prior_weight * prior_logprob
        return self.length_normalised(logprob, length)

    def length_normalised(self, logprob: float, length: int) -> float:
        """``log p / len ** length_penalty``: a clue's score before any prior calibration."""
        return logprob / (length**self.length_penalty)

    def with_scoring(self, name: str) -> DecodingConfig:
        """This config ranked the :data:`SCORINGS` way ``name`` (``"paper"``, ``"seal"``, ``"fast"``)."""
        if name not in SCORINGS:
            raise ValueError(f"unknown scoring {name!r}; valid: {sorted(SCORINGS)}")
        return self.replace(**SCORINGS[name])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> DecodingConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def option_names(cls) -> set[str]:
        """Every key :meth:`from_options` accepts: the fields and their :data:`ALIASES`."""
        return {f.name for f in dataclasses.fields(cls)} | set(cls.ALIASES)

    @classmethod
    def from_options(cls, options: dict[str, Any], base: DecodingConfig | None = None) -> DecodingConfig:
        """``base`` (default: the defaults) with ``key=value`` overrides, values given as text or typed.

        Unknown keys are an error naming the valid ones; ``beams``/``groups`` are accepted for
        ``num_beams``/``num_groups``.
        """
        base = base or cls()
        aliases = cls.ALIASES
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in options.items():
            name = aliases.get(key, key)
            if name not in fields:
                raise ValueError(f"unknown decoding option {key!r}; valid: {sorted(fields)} (or beams, groups)")
            if isinstance(value, str):
                try:
                    value = parse_text(value, hints[name])
                except ValueError as exc:
                    raise ValueError(f"decoding option {key}: {exc}") from None
            changes[name] = value
        return dataclasses.replace(base, **changes)
