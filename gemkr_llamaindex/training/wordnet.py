"""A small reader of WordNet's noun database (the ``data.noun`` / ``index.noun`` files Debian's
``wordnet-base`` installs under ``/usr/share/wordnet``), for the corpus-supervised query builder.

Only what the builder needs: synsets by lemma, their lemmas, gloss, lexicographer file (``noun.animal``,
``noun.artifact``, ...), hypernyms and hyponyms (instance links included). Synsets are keyed by their
8-digit offset, the number ImageNet's class ids carry (``n02123159`` = ``tiger_cat``). Nothing is
downloaded; where no WordNet is installed, :func:`find_wordnet` returns None and the builder works
from titles and descriptions alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# The lexicographer files in order of their numbers (WordNet's lexnames(5WN)); nouns are 3..28.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time",
)
DEFAULT_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/wordnet/dict")


@dataclass
class Synset:
    offset: int
    lexname: str
    lemmas: list[str]  # as written in WordNet, underscores turned into spaces
    gloss: str
    hypernyms: list[int] = field(default_factory=list)  # '@' and '@i'
    hyponyms: list[int] = field(default_factory=list)  # '~' and '~i'

    @property
    def name(self) -> str:
        return self.lemmas[0]


class WordNet:
    """Noun synsets of one WordNet database folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        data = self.folder / "data.noun"
        if not data.is_file():
            raise FileNotFoundError(f"{data} is missing: {self.folder} is not a WordNet database folder")
        self.synsets: dict[int, Synset] = {}
        self._by_lemma: dict[str, list[int]] = {}
        with open(data, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):  # the licence header
                    continue
                synset = _parse(line)
                if synset is not None:
                    self.synsets[synset.offset] = synset
        index = self.folder / "index.noun"
        if index.is_file():  # sense order: the most frequent sense first
            with open(index, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith("  "):
                        continue
                    parts = line.split()
                    if len(parts) < 4:
                        continue
                    n_ptr = int(parts[3])
                    offsets = [int(x) for x in parts[4 + n_ptr + 2:] if x.isdigit()]
                    self._by_lemma[parts[0].replace("_", " ").lower()] = [o for o in offsets if o in self.synsets]
        else:
            for s in self.synsets.values():
                for lemma in s.lemmas:
                    self._by_lemma.setdefault(lemma.lower(), []).append(s.offset)

    def lookup(self, lemma: str) -> list[Synset]:
        """Noun synsets of ``lemma`` (case-insensitive), most frequent sense first."""
        return [self.synsets[o] for o in self._by_lemma.get(lemma.strip().lower(), [])]

    def __getitem__(self, offset: int) -> Synset:
        return self.synsets[offset]

    def hypernym_closure(self, synset: Synset, depth: int = 6) -> list[Synset]:
        """Hypernyms breadth-first up to ``depth`` levels, nearest first, each once."""
        return self._closure(synset, "hypernyms", depth, limit=None)

    def hyponym_closure(self, synset: Synset, depth: int = 2, limit: int = 60) -> list[Synset]:
        """Hyponyms breadth-first up to ``depth`` levels (at most ``limit``), nearest first."""
        return self._closure(synset, "hyponyms", depth, limit)

    def _closure(self, synset: Synset, link: str, depth: int, limit: int | None) -> list[Synset]:
        out, seen, frontier = [], {synset.offset}, [synset.offset]
        for _ in range(depth):
            nxt = []
            for o in frontier:
                for h in getattr(self.synsets[o], link):
                    if h not in seen and h in self.synsets:
                        seen.add(h)
                        out.append(self.synsets[h])
                        nxt.append(h)
                        if limit is not None and len(out) >= limit:
                            return out
            frontier = nxt
        return out


def _parse(line: str) -> Synset | None:
    head, _, gloss = line.partition("|")
    parts = head.split()
    if len(parts) < 4 or not parts[0].isdigit():
        return None
    offset, lexnum = int(parts[0]), int(parts[1])
    n_words = int(parts[3], 16)
    lemmas = [parts[4 + 2 * i].replace("_", " ") for i in range(n_words)]
    lemmas = [lem.split("(")[0] for lem in lemmas]  # adjective markers such as "(a)"
    i = 4 + 2 * n_words
    n_ptr = int(parts[i])
    hyper, hypo = [], []
    for k in range(n_ptr):
        sym, target, pos = parts[i + 1 + 4 * k], int(parts[i + 2 + 4 * k]), parts[i + 3 + 4 * k]
        if pos != "n":
            continue
        if sym in ("@", "@i"):
            hyper.append(target)
        elif sym in ("~", "~i"):
            hypo.append(target)
    lexname = LEXNAMES[lexnum] if lexnum < len(LEXNAMES) else f"lex.{lexnum}"
    return Synset(offset, lexname, lemmas, gloss.strip(), hyper, hypo)


def find_wordnet(folder: str | Path | None = None) -> WordNet | None:
    """The installed WordNet (``$WORDNET_DIR`` or Debian's folder), or None when there is none."""
    candidates = [folder] if folder is not None else [os.environ.get("WORDNET_DIR"), *DEFAULT_DIRS]
    for c in candidates:
        if c and (Path(c) / "data.noun").is_file():
            return WordNet(c)
    if folder is not None:
        raise FileNotFoundError(f"no WordNet database in {folder} (data.noun missing)")
    return None
