"""Training queries made from the corpus alone (``gemkr train`` with ``corpus_queries``): no labelled data.

Users have a corpus but rarely multimodal training queries. For each document this builds pseudo-queries
of the kinds a knowledge-based VQA user asks, all pointing at that document:

* **named** (text-only): the question names the entity, e.g. "What is the taxonomic family of the
  horse?" or "The horse belongs to what?";
* **pictured**: the entity is replaced by what one would say about a picture of it ("this animal", "this
  building"; a word from a fixed list of visual kinds) and the *visual tags slot* holds what the library's
  tagger (an ImageNet classifier plus OCR, :mod:`gemkr_llamaindex.tags`) would say about such a picture;
* **described** (text-only, opt-in): the entity is what the question asks for, described by a fact of its
  document ("Kazan is the capital of Tatarstan" -> "Which city is the capital of Tatarstan?"), so the
  model learns to name an entity that a question only describes ("Who wrote Common Sense?").

How a document is read (every step works without WordNet; WordNet, e.g. Debian's ``wordnet-base``, adds
hypernyms, hyponyms and ImageNet's classes). A passage that opens with its title (DPR's ``"{title}. {text}"``
layout) is read without it.

1. **names**: the title (without a parenthesised qualifier) and the aliases its first sentence gives
   ("also called X and Y", "also known as X", "popularly known as X", a parenthesis right after the name);
2. **kind**: the first visual kind (:data:`VISUAL_KINDS`) among the head noun of the description
   (``"Small domesticated carnivorous mammal"`` -> mammal), of the first sentence's "is a ..." phrase,
   WordNet's hypernyms and lexicographer file of the title's sense that best matches the text (noun.animal
   -> animal), and the topic ("People" -> person; "she"/"he" in the text picks woman/man);
3. **questions**: generic questions about the kind ("What is this animal?"), questions about a word of
   the text ("What is the family of this animal?"), and cloze questions from a sentence of the
   document with the entity replaced and one span (a number, a name, a final noun phrase) asked for,
   cut to the words around the asked span ("This animal is a member of what?").

**Simulated tags** follow what a classifier and OCR say about photos, not what the text says: ImageNet
classes that WordNet files under the entity (1-3 of them; "tiger cat", "Egyptian cat" for Cat), else
ImageNet classes whose name occurs in the text (a "military uniform" for an admiral), often a wrong class
too (taggers err), now and then a word a person would use (a WordNet synonym or kind), and only
sometimes text read off the picture, which is the entity's name less than half of the time (signs and
captions mostly say something else). A pictured query thus has to be resolved from the question and a
noisy picture description, as real ones are, instead of from a name leaked into the tags. Documents the
classifier has classes for get more pictured queries than others: photos are mostly of such things.

The targets (clues) are then cut from the document by the trainer: the paper's clue sampler (keyword
hits of the question) and/or the document's opening tokens (for ``anchor="doc_start"`` decoding; with
titled passages the opening is the title). No benchmark question is used anywhere.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gemkr_llamaindex.kb.corpus import titled
from gemkr_llamaindex.training.data import QueryRecord
from gemkr_llamaindex.training.wordnet import Synset, WordNet

_WORD = re.compile(r"[A-Za-z][A-Za-z\-']+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_ALIAS = re.compile(
    r"\b(?:also (?:called|known as|referred to as)|commonly (?:called|known as)|popularly known as|"
    r"sometimes called|or simply)\s+(?:the\s+|a\s+|an\s+)?([^,;.()]{2,60})", re.IGNORECASE)
_PAREN = re.compile(r"^[^(]{0,80}?\(([^)]{2,60})\)")
_IS_A = re.compile(r"\b(?:is|was|are|were)\s+(?:a|an|the|one of the)\s+([^,;.()]{2,80})")
_QUALIFIER = re.compile(r"\s*\([^)]*\)\s*$")
_NUMBER = re.compile(r"\b\d[\d,.]*(?:\s?(?:BCE|BC|CE|AD|km|kilometres|miles|metres|years|days|million|billion))?\b")
_CAPS = re.compile(r"\b(?:[A-Z][a-z]+(?:\s+(?:of|the|de|and)?\s*[A-Z][a-z]+)*)\b")
_STOP = frozenset(
    "a an the and or of in on at to for from by with as is was are were be been being it its this that these those "
    "which who whom whose what when where why how he she they them his her their there here than then also such "
    "not no can may one two many most more other some any all each both into over under about after before".split())
_DESCRIPTION_BREAK = re.compile(r"\s+(?:of|in|from|for|that|which|who|on|by|with|at|and|or|to)\s+|[,;(]")

TOPIC_KINDS = {
    "People": "person", "Geography": "place", "Biology and health sciences": "organism", "Physical sciences": "thing",
    "Technology": "device", "Arts": "work", "History": "event", "Everyday life": "thing", "Philosophy and religion":
    "idea", "Mathematics": "concept", "Society and social sciences": "thing",
}
# WordNet lexicographer file -> the word a question about a picture of it uses
LEX_KINDS = {
    "noun.animal": "animal", "noun.artifact": "object", "noun.food": "food", "noun.person": "person",
    "noun.plant": "plant", "noun.location": "place", "noun.object": "object", "noun.substance": "material",
    "noun.body": "body part", "noun.event": "event", "noun.phenomenon": "phenomenon", "noun.group": "group",
    "noun.communication": "work", "noun.shape": "shape", "noun.act": "activity", "noun.cognition": "idea",
}
KIND_QUESTIONS = {
    "animal": ["Which animal is this?", "What kind of animal is this?", "What is this animal known for?",
               "Where does this animal live?", "What does this animal eat?"],
    "person": ["Who is this person?", "What is this person known for?", "What was the profession of this person?",
               "Where was this person born?"],
    "place": ["Which place is this?", "Where is this place?", "What is this place known for?", "What is this city?"],
    "plant": ["Which plant is this?", "What is this plant used for?", "Where does this plant grow?"],
    "food": ["What is this food?", "What is this made from?", "Where does this dish come from?"],
    "object": ["What is this object?", "What is this used for?", "What is this object made of?",
               "What is this device called?"],
}
#: The words a question about a picture uses for what it shows ("this animal"); a document's kind is the
#: first of its candidate kinds in this list, so text-only words ("capital", "sixth") never become one.
VISUAL_KINDS = frozenset("""
animal mammal bird fish insect reptile amphibian dog cat horse snake spider shark whale monkey ape bear
plant tree flower fruit vegetable mushroom fungus grass crop herb shrub seed
food dish drink beverage meal bread cheese sauce dessert spice
person man woman child king queen emperor leader ruler politician president musician singer composer
painter artist writer poet author actor actress scientist physicist chemist mathematician philosopher
inventor engineer athlete player footballer explorer astronaut soldier general saint prophet
place city town village country state region island mountain river lake sea ocean desert forest valley
volcano continent park capital
building structure tower bridge church temple mosque cathedral castle palace monument stadium museum
house dam canal road wall statue
vehicle car truck bus train ship boat aircraft airplane spacecraft rocket motorcycle bicycle
device machine instrument tool weapon computer camera engine clock phone
object material substance mineral metal element rock stone fabric
painting sculpture artwork book film game sport dance flag symbol logo map
organization company team band club
organ disease cell molecule
planet star galaxy moon satellite telescope comet asteroid
""".split())

GENERIC_QUESTIONS = ["What is this {kind}?", "What is this {kind} called?", "What is this {kind} known for?",
                     "Which {kind} is shown here?", "What can you tell me about this {kind}?"]


@dataclass
class Entity:
    """What the builder knows about one document's entity."""

    doc_id: str
    title: str
    names: list[str]  # title first, then aliases
    kinds: list[str]  # words for "this ___", most specific first
    tags: list[str]  # what a person might call a picture of it (aliases, WordNet synonyms and hyponyms)
    named: str  # how a question names it ("the cat", "Grace Hopper")
    sentences: list[str] = field(default_factory=list)  # for cloze questions (at most 35 words each)
    nouns: list[str] = field(default_factory=list)  # nouns of its text, for "What is the ___ of ..." questions
    labels: list[str] = field(default_factory=list)  # ImageNet classes WordNet files under it
    scene: list[str] = field(default_factory=list)  # ImageNet classes whose name occurs in its text


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if len(s.split()) >= 4]


_NOT_NOUN = re.compile(r"(?:ed|ing|ly|ous|ful|less|able|ible)$")
_NOUN_SLOT = re.compile(r"\b(?:the|a|an|its|their|his|her)\s+(?:[a-z\-]+\s+){0,2}?([a-z\-]{4,})\b"
                        r"(?=\s+(?:of|is|was|and|in|that|which|for|to)\b|[,.;])")


def _is_noun(word: str, wordnet: WordNet | None) -> bool:
    """A noun by WordNet when there is one, else by its ending (no -ed, -ing, -ly, -ous, -able ... adjectives and verbs)."""
    if wordnet is not None:
        return bool(wordnet.lookup(word))
    return not _NOT_NOUN.search(word.lower())


def _head(phrase: str, wordnet: WordNet | None) -> str | None:
    """The head noun of a description ("Small domesticated carnivorous mammal" -> "mammal")."""
    phrase = _DESCRIPTION_BREAK.split(phrase.strip(), maxsplit=1)[0].strip()
    words = [w.lower() for w in _WORD.findall(phrase) if w.lower() not in _STOP]
    for w in reversed(words):
        if _is_noun(w, wordnet) and not (wordnet is None and _NOT_NOUN.search(w)):
            return w
    return None


def _aliases(first: str, title: str) -> list[str]:
    out = []
    for m in _ALIAS.finditer(first):
        for part in re.split(r"\s+(?:and|or)\s+|,\s*", m.group(1)):
            part = part.strip(" '\"")
            if 2 <= len(part) <= 40 and len(part.split()) <= 5 and part.lower() != title.lower():
                out.append(part)
    m = _PAREN.match(first)
    if m and not any(ch.isdigit() for ch in m.group(1)):
        out.append(m.group(1).split(";")[0].split(",")[0].strip())
    return list(dict.fromkeys(a for a in out if a))


def _is_common_noun(title: str, text: str) -> bool:
    """A common noun ("cat") appears in lower case inside its text; a proper name ("Madrid") does not."""
    low = title.lower()
    return low != title and bool(re.search(rf"\b{re.escape(low)}\b", text))


def _best_sense(wn: WordNet, title: str, text: str) -> Synset | None:
    """The title's WordNet noun sense whose gloss, lemmas and hypernyms share most words with the text."""
    senses = wn.lookup(title)
    if not senses:
        return None
    words = {w.lower() for w in _WORD.findall(text)} - _STOP
    best, best_score = None, -1.0
    for rank, s in enumerate(senses):
        bag = {w.lower() for w in _WORD.findall(s.gloss)}
        for h in wn.hypernym_closure(s, 2):
            bag.update(w.lower() for lemma in h.lemmas for w in _WORD.findall(lemma))
        score = len((bag - _STOP) & words) - 0.1 * rank  # ties: the more frequent sense
        if score > best_score:
            best, best_score = s, score
    return best if best_score > 0 or len(senses) == 1 else None


class EntityReader:
    """Reads :class:`Entity` profiles from documents (see the module docstring)."""

    def __init__(self, wordnet: WordNet | None = None, imagenet: Sequence[tuple[int, str]] | None = None) -> None:
        self.wordnet = wordnet
        self.imagenet = list(imagenet or [])  # (WordNet offset, class name)

    def read(self, docs: Iterable[dict[str, Any]]) -> dict[str, Entity]:
        """``docs``: dicts with ``id`` and ``text`` and, when known, ``title``, ``description``, ``topic``."""
        entities: dict[str, Entity] = {}
        senses: dict[int, str] = {}
        scene = _ClassMatcher([name for _, name in self.imagenet]) if self.imagenet else None
        for d in docs:
            ent, sense = self._entity(d)
            entities[ent.doc_id] = ent
            if sense is not None:
                senses.setdefault(sense.offset, ent.doc_id)
            if scene is not None:
                ent.scene = scene.find(" ".join(ent.sentences[:6]) or str(d["text"]))
        if self.wordnet is not None and self.imagenet:
            self._attach_imagenet(entities, senses)
        return entities

    def _entity(self, d: dict[str, Any]) -> tuple[Entity, Synset | None]:
        full_title = str(d.get("title") or d["id"])
        text = _untitled(str(d["text"]), full_title)
        title = _QUALIFIER.sub("", full_title).strip()
        sentences = _sentences(text) or [text]
        first = sentences[0]
        names = list(dict.fromkeys([title, *_aliases(first, title)]))
        kinds: list[str] = []
        if d.get("description"):
            h = _head(str(d["description"]), self.wordnet)
            if h:
                kinds.append(h)
        m = _IS_A.search(first)
        if m:
            h = _head(m.group(1), self.wordnet)
            if h:
                kinds.append(h)
        tags = list(names[1:])
        sense = None
        if self.wordnet is not None:
            sense = _best_sense(self.wordnet, title, text)
            if sense is not None:
                hyper = self.wordnet.hypernym_closure(sense, 3)
                kinds += [h.name.lower() for h in hyper[:2] if len(h.name.split()) <= 2]
                lex = LEX_KINDS.get(sense.lexname)
                if lex:
                    kinds.append(lex)
                tags += [lemma for lemma in sense.lemmas if lemma.lower() != title.lower()]
                tags += [h.name for h in self.wordnet.hyponym_closure(sense, 2, limit=40)]
        topic_kind = TOPIC_KINDS.get(str(d.get("topic") or ""))
        if "person" in kinds or topic_kind == "person":
            she = len(re.findall(r"\b(?:she|her)\b", text, re.IGNORECASE))
            he = len(re.findall(r"\b(?:he|his|him)\b", text, re.IGNORECASE))
            kinds.insert(0, "woman" if she > he else "man" if he > she else "person")
        kinds = [k for k in dict.fromkeys(kinds) if k in VISUAL_KINDS and k.lower() != title.lower()]
        kinds = kinds or [topic_kind or "thing"]  # the topic's word only when nothing more specific is known
        named = f"the {title.lower()}" if _is_common_noun(title, text) else title
        nouns = [m.group(1) for sent in sentences[:5] for m in _NOUN_SLOT.finditer(sent)]
        nouns = [w for w in dict.fromkeys(nouns) if _is_noun(w, self.wordnet) and w not in _STOP
                 and w not in {n.lower() for n in names}]
        ent = Entity(str(d["id"]), title, names, kinds, list(dict.fromkeys(tags)), named,
                     [x for x in sentences if len(x.split()) <= 35], nouns)
        return ent, sense

    def _attach_imagenet(self, entities: dict[str, Entity], senses: dict[int, str]) -> None:
        """An ImageNet class tags the nearest document up its WordNet hypernym chain (<= 3 levels)."""
        for offset, label in self.imagenet:
            syn = self.wordnet.synsets.get(offset)
            if syn is None:
                continue
            for s in [syn, *self.wordnet.hypernym_closure(syn, 3)]:
                if s.offset in senses:
                    ent = entities[senses[s.offset]]
                    if label not in ent.labels:
                        ent.labels.append(label)
                    break


def _untitled(text: str, title: str) -> str:
    """``text`` without the ``"{title}. "`` a DPR-style passage opens with (:func:`titled`'s inverse)."""
    head = titled(title, "")
    return text[len(head):] if text.startswith(head) else text


class _ClassMatcher:
    """Finds the classifier classes whose name occurs in a text, as whole words ("military uniform", "dam")."""

    def __init__(self, names: Sequence[str]) -> None:
        self.by_word: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for name in dict.fromkeys(names):
            words = tuple(name.lower().split())
            if words and (len(words) > 1 or len(words[0]) >= 4):  # "ox", "web" match too much text
                self.by_word.setdefault(words[0], []).append((words, name))

    def find(self, text: str, limit: int = 8) -> list[str]:
        words = [w.lower() for w in _WORD.findall(text)]
        found: list[str] = []
        for i, w in enumerate(words):
            for phrase, name in self.by_word.get(w, ()):
                if tuple(words[i : i + len(phrase)]) == phrase and name not in found:
                    found.append(name)
        return found[:limit]


class PseudoQueryBuilder:
    """Pseudo-queries per document: ``named`` text-only ones and ``pictured`` ones with simulated tags."""

    def __init__(self, entities: dict[str, Entity], named: int = 2, pictured: int = 4, seed: int = 0,
                 distractor_rate: float = 0.35, no_tags_rate: float = 0.1, ocr_rate: float = 0.15,
                 person_rate: float = 0.25, pictured_extra: int = 4, distractors: Sequence[str] | None = None,
                 described: int = 0) -> None:
        """``described``: that many described questions per document (fewer when its text has fewer
        sentences with the entity as subject). Rates of a pictured query's tags: ``distractor_rate`` a
        wrong class, ``no_tags_rate`` no tags at all, ``ocr_rate`` text read off the picture (the entity's
        name, or other words: signs and captions rarely spell the answer), ``person_rate`` a word a person would use (a synonym or more specific
        kind). A document the classifier has classes for gets ``pictured_extra`` more pictured queries, one
        with classes named in its text one more: photos are mostly of things a camera can show.
        ``distractors``: the classes a tagger says by mistake (default: other documents' names; the
        ImageNet class names are the realistic choice)."""
        counts = {"named": named, "pictured": pictured, "pictured_extra": pictured_extra, "described": described}
        negative = [k for k, v in counts.items() if v < 0]
        if negative:
            raise ValueError(f"query counts per document cannot be negative: {', '.join(f'{k}={counts[k]}' for k in negative)}")
        self.entities = entities
        self.named, self.pictured, self.pictured_extra, self.described = named, pictured, pictured_extra, described
        self.distractor_rate, self.no_tags_rate = distractor_rate, no_tags_rate
        self.ocr_rate, self.person_rate = ocr_rate, person_rate
        self.rng = random.Random(seed)
        self._titles = [e.title for e in entities.values()] or ["object"]
        self._distractors = list(distractors or self._titles)

    def queries(self, doc_id: str) -> list[QueryRecord]:
        ent = self.entities[doc_id]
        out = []
        for i in range(self.named):
            out.append(QueryRecord(None, self._question(ent, ent.named), (doc_id,), None, f"{doc_id}#n{i}"))
        extra = self.pictured_extra if ent.labels else 1 if ent.scene else 0
        for i in range(self.pictured + extra):
            kind = self.rng.choice(ent.kinds[:3])
            tags, telling = self._tags(ent)
            # Tags that say nothing about the entity leave the question to carry it: no "What is this thing?"
            question = self._question(ent, f"this {kind}", kind, specific=not telling)
            out.append(QueryRecord(None, question, (doc_id,), tags, f"{doc_id}#p{i}"))
        if self.described:
            for i, question in enumerate(self._described(ent, self.described)):
                out.append(QueryRecord(None, question, (doc_id,), None, f"{doc_id}#d{i}"))
        return out

    def all_queries(self) -> list[QueryRecord]:
        return [q for doc_id in self.entities for q in self.queries(doc_id)]

    # ---- questions ----------------------------------------------------------------------------------
    def _question(self, ent: Entity, mention: str, kind: str | None = None, specific: bool = False) -> str:
        """A question about ``ent`` naming it as ``mention``; ``specific`` asks about its text (a cloze or a
        word of it) whenever the text allows, never a generic "What is this?"."""
        r = 0.0 if specific else self.rng.random()
        if r < 0.45:
            q = self._cloze(ent, mention, hide_names=kind is not None)
            if q:
                return q
        if r < 0.75 or specific:
            word = self._content_word(ent)
            if word:
                return f"What is the {word} of {mention}?" if self.rng.random() < 0.5 else \
                    f"What {word} does {mention} have?"
        if kind is None:  # a named entity
            return self.rng.choice([f"What is {mention}?", f"Tell me about {mention}.", f"What is {mention} known for?"])
        pool = KIND_QUESTIONS.get(kind) or [t.format(kind=kind) for t in GENERIC_QUESTIONS]
        return self.rng.choice(pool)

    def _content_word(self, ent: Entity) -> str | None:
        return self.rng.choice(ent.nouns) if ent.nouns else None

    def _cloze(self, ent: Entity, mention: str, hide_names: bool) -> str | None:
        """A sentence of the document with the entity replaced by ``mention`` and one span asked for;
        with ``hide_names`` (a pictured question) none whose text still names the entity."""
        if not ent.sentences:  # every sentence of the document is too long to ask about
            return None
        sentence = self.rng.choice(ent.sentences[:6])
        s = sentence.rstrip(" .!?")
        end = _subject_end(s, ent.names)
        if end is None:
            return None
        s = mention + s[end:]
        s = s[0].upper() + s[1:]
        if hide_names and _names_any(s, ent.names):
            return None
        spans = [m for m in _NUMBER.finditer(s)] + [m for m in _CAPS.finditer(s) if m.start() > 0
                                                    and m.group().lower() not in mention.lower()]
        if spans:
            m = self.rng.choice(spans)
            word = "when" if re.search(r"\d{3,4}\s*(?:BCE|BC|CE|AD)?$", m.group()) else "what"
            q = s[: m.start()] + word + s[m.end():]
        else:
            words = s.split()
            if len(words) < 5:
                return None
            cut = max(3, len(words) - self.rng.randint(1, 3))
            q = " ".join(words[:cut]) + " what"
        return _window(re.sub(r"\s+", " ", q).strip()) + "?"

    def _described(self, ent: Entity, limit: int) -> list[str]:
        """Up to ``limit`` questions asking for ``ent`` by a fact of its text: a sentence whose subject is
        the entity (a name or a pronoun) with the subject turned into "Who" (people), "Which <kind>" or
        "What", cut to its first words; none whose rest still names the entity."""
        kind = ent.kinds[0]
        out: list[str] = []
        for sentence in self.rng.sample(ent.sentences[:6], k=min(len(ent.sentences), 6)):
            s = sentence.rstrip(" .!?")
            end = _subject_end(s, ent.names)
            words = s[end:].split() if end is not None else []
            if len(words) < 3 or not words[0][:1].islower() or words[0].endswith(","):
                continue  # no predicate right after the subject, or an apposition ("Kraków, officially ...")
            rest = " ".join(words[:16]).rstrip(",;:")
            if _names_any(rest, ent.names):
                continue
            if kind in ("person", "man", "woman"):
                wh = "Who"
            elif words[0] in ("are", "were", "have") or kind == "thing" or self.rng.random() < 0.5:
                wh = "What"
            else:
                wh = f"Which {kind}"
            out.append(f"{wh} {rest}?")
            if len(out) >= limit:
                break
        return out

    # ---- tags ---------------------------------------------------------------------------------------
    def _tags(self, ent: Entity) -> tuple[str | None, bool]:
        """What the tagger says about a picture of ``ent`` (see the module docstring), and whether any of it
        points at ``ent`` (a class filed under it or named in its text, a synonym, its name)."""
        rng = self.rng
        if rng.random() < self.no_tags_rate:
            return None, False
        picks: list[str] = []
        if ent.labels:
            picks += rng.sample(ent.labels, k=min(len(ent.labels), rng.randint(1, 3)))
        elif ent.scene and rng.random() < 0.6:
            picks += rng.sample(ent.scene, k=min(len(ent.scene), rng.randint(1, 2)))
        if ent.tags and rng.random() < self.person_rate:
            picks.append(rng.choice(ent.tags[:12]))
        read = None
        if rng.random() < self.ocr_rate:  # text in the picture: a sign, a caption, a logo
            r = rng.random()
            if r < 0.4:
                read = rng.choice(ent.names)
            elif r < 0.7 and ent.sentences:  # a name its text mentions: a sign near the thing
                words = [m.group() for m in _CAPS.finditer(rng.choice(ent.sentences[:6]))]
                read = rng.choice(words) if words else None
            else:  # text that says nothing about it
                read = rng.choice(self._titles)
        telling = bool(picks) or read in ent.names
        if read:
            picks.append(read)
        if not picks or rng.random() < self.distractor_rate:
            picks.insert(rng.randrange(len(picks) + 1), rng.choice(self._distractors))
        return ", ".join(dict.fromkeys(p for p in picks if p)), telling


def _subject_end(sentence: str, names: Sequence[str]) -> int | None:
    """Where a sentence's subject ends when the subject is the entity: one of its ``names`` (longest first,
    after an optional article) or a pronoun; None when the sentence opens with something else."""
    for name in sorted(names, key=len, reverse=True):
        m = re.match(rf"^(?:the |a |an )?{re.escape(name)}\b", sentence, re.IGNORECASE)
        if m:
            return m.end()
    m = re.match(r"^(?:It|He|She|They)\b", sentence)
    return m.end() if m else None


def _names_any(text: str, names: Sequence[str]) -> bool:
    """Whether ``text`` holds one of ``names`` as whole words (case-insensitive)."""
    return any(re.search(rf"\b{re.escape(n)}\b", text, re.IGNORECASE) for n in names)


def _window(question: str, before: int = 7, after: int = 4, head: int = 4) -> str:
    """A long cloze question cut to its first ``head`` words (the mention) and the words around the asked
    word, as a person would ask it ("This animal is a member of what"), not a whole quoted sentence."""
    words = question.split()
    if len(words) <= head + before + after + 1:
        return question
    at = next((i for i, w in enumerate(words) if w.strip(",;:") in ("what", "when")), len(words) - 1)
    if at < head + before:
        return " ".join(words[: at + after + 1])
    return " ".join(words[:head] + words[at - before : at + after + 1])


def imagenet_synsets() -> list[tuple[int, str]]:
    """ImageNet-1k classes as (WordNet offset, name), from ultralytics' ``ImageNet.yaml`` if installed."""
    import importlib.util
    from pathlib import Path

    import yaml

    spec = importlib.util.find_spec("ultralytics")  # locate only: importing ultralytics writes settings
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "datasets" / "ImageNet.yaml"
    if not path.is_file():
        return []
    synsets = yaml.safe_load(path.read_text(encoding="utf-8")).get("map") or {}
    return [(int(k[1:]), str(v).replace("_", " ")) for k, v in sorted(synsets.items()) if str(k)[1:].isdigit()]


def load_metadata(source: str | None) -> dict[str, dict[str, str]]:
    """Per-document titles/descriptions/topics: ``"wiki-summaries"`` (the packaged ones), a JSONL file of
    ``{"id", "title"?, "description"?, "topic"?}`` rows, or None (titles are then the document ids)."""
    if source is None:
        return {}
    if source == "wiki-summaries":
        from gemkr_llamaindex.assets import wiki_summary_metadata

        return wiki_summary_metadata()
    from pathlib import Path

    from gemkr_llamaindex.kb.corpus import iter_jsonl

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} does not exist (JSONL rows with id, title, description, topic)")
    out = {}
    for n, row in iter_jsonl(path, ValueError):
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}:{n}: expected an object with an 'id'")
        out[str(row["id"])] = {k: str(v) for k, v in row.items() if k != "id" and v is not None}
    return out


def corpus_training_queries(kb: Any, *, named: int = 2, pictured: int = 4, wordnet: str | None = "auto",
                            metadata: str | None = None, imagenet: bool = True, seed: int = 0,
                            distractor_rate: float = 0.35, no_tags_rate: float = 0.1, ocr_rate: float = 0.15,
                            person_rate: float = 0.25, pictured_extra: int = 4, described: int = 0,
                            limit: int | None = None) -> list[QueryRecord]:
    """Pseudo-queries for every document of ``kb`` (the first ``limit`` ones if given); see the module
    docstring. ``wordnet``: ``"auto"`` (use the installed one if any), ``"none"``, or a folder."""
    from gemkr_llamaindex.training.wordnet import find_wordnet

    wn = None if wordnet in (None, "none") else find_wordnet(None if wordnet == "auto" else wordnet)
    labels = imagenet_synsets() if imagenet else []
    meta = load_metadata(metadata)
    n = kb.num_docs if limit is None else min(limit, kb.num_docs)
    docs = []
    for i in range(n):
        doc_id = kb.doc_id(i)
        docs.append({"id": doc_id, "text": kb.text(i), **meta.get(doc_id, {})})
    entities = EntityReader(wn, labels).read(docs)
    builder = PseudoQueryBuilder(entities, named, pictured, seed, distractor_rate, no_tags_rate, ocr_rate,
                                 person_rate, pictured_extra, distractors=[name for _, name in labels] or None,
                                 described=described)
    return builder.all_queries()
