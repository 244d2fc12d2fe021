"""Turn a generation into a VQA-style short answer (one to three words).

Small instruction models ignore "answer in one to three words" and reply with a sentence such as
"The capital of France is Paris." VQA accuracy compares short strings, so the reader cuts the
generation down deterministically:

1. keep the first line; drop a leading "Answer:", "The answer (to this question) is", "Based on the
   passages," and passage markers like "[2]"; cut at the first sentence end;
2. a quoted span of at most ``max_words`` words ('called the "obverse"') is the answer;
3. keep the first clause (split at commas, semicolons, colons) that adds a word to the question;
4. if still longer than ``max_words``: split the clause at its first linking verb ("is", "was",
   "belongs to", "known as", ...) that does not open a relative clause ("who is") and keep the side with the larger share of words that are neither
   function words nor echoes of the question ("The capital of France is Paris" -> "Paris";
   "Paris is the capital of France" -> "Paris");
5. strip leading articles, prepositions, lower-case participles and adverbs ("located in",
   "taken using a") and words echoed from the question, unless nothing would be left; keep
   ``max_words`` words: the first ones after a linking verb, else the last ones (English puts new
   information last: "She served in the U.S. Navy" -> "U.S. Navy"), except when the span opens with a
   number ("2 million people live there"); drop surrounding punctuation and markdown.

Pure Python with no dependencies, so metrics code and tests can import it cheaply.
"""

from __future__ import annotations

import re

__all__ = ["short_answer"]

_PREFIXES = re.compile(
    r"^\s*(?:"
    r"(?:(?:short|final)\s+)?answer\s*[:\-]\s*"
    r"|the\s+(?:short\s+|final\s+|correct\s+)?answer(?:\s+to\s+(?:the|this|your)\s+question)?\s+is\s*:?\s*"
    r"|(?:based\s+on|according\s+to|from)\s+(?:the\s+)?(?:passages?|image|text|information|context)[^,:]*[,:]\s*"
    r"|\[\d+\]\s*"
    r"|[*_#>]+\s*"
    r")+",
    re.IGNORECASE,
)
# A sentence ends at . ! ? followed by space or end, but not after a single capital ("U.S. Navy")
# nor between digits ("2.04").
_SENTENCE_END = re.compile(r"(?<!\b[A-Z])[.!?](?=\s|$)")
_CLAUSE_END = re.compile(r"[,;:(]|\s[-\u2013\u2014]\s")
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201c\u201d]{1,60})[\"\u201d]")
_LINKING = re.compile(
    r"\b(?:is|are|was|were|be|been|belongs?\s+to|contains?|has|have|had|means|called|named|"
    r"known\s+as|refers\s+to)\b",
    re.IGNORECASE,
)
_RELATIVE = re.compile(r"\b(?:that|which|who|whom|whose)\s+$", re.IGNORECASE)
# fmt: off
_LEADING_FILLER = {
    "a", "an", "the", "this", "that", "these", "those", "it", "its", "some", "any",
    "in", "at", "on", "by", "of", "from", "as", "with", "for", "to", "into", "onto", "via", "through",
    "within", "about", "around", "approximately", "called", "named", "known", "made",
}
_QUESTION_STOP = {
    "what", "which", "who", "whom", "whose", "where", "when", "why", "how", "is", "are", "was", "were",
    "do", "does", "did", "the", "a", "an", "this", "that", "these", "those", "of", "in", "on", "at", "to",
    "for", "it", "its", "image", "picture", "photo", "shown", "kind", "type",
}
# fmt: on
_WORD = re.compile(r"[\w'\-]+", re.UNICODE)
_PUNCT = " \t.,;:!?\"'`()[]{}*_\u201c\u201d\u2018\u2019"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _bare(token: str) -> str:
    return token.strip(_PUNCT).lower()


def _question_words(question: str | None) -> set[str]:
    if not question:
        return set()
    words = set(_words(question))
    # "belong" in the question also covers "belongs" in the answer, and the reverse.
    return words | {w + "s" for w in words} | {w[:-1] for w in words if w.endswith("s")}


def _novelty(text: str, qwords: set[str]) -> float:
    """Share of the words in ``text`` that are neither in the question nor function words."""
    words = _words(text)
    if not words:
        return 0.0
    return sum(1 for w in words if w not in qwords and w not in _QUESTION_STOP) / len(words)


def _is_filler(token: str) -> bool:
    """Articles, prepositions, and lower-case participles/adverbs ("taken", "using", "mostly")."""
    word = _bare(token)
    if word in _LEADING_FILLER:
        return True
    lower_case = token.strip(_PUNCT)[:1].islower()
    return lower_case and len(word) > 3 and word.endswith(("ed", "en", "ing", "ly"))


def _strip_leading(tokens: list[str], qwords: set[str]) -> list[str]:
    """Drop leading fillers and words echoed from the question, keeping at least one token."""
    i = 0
    while i < len(tokens) - 1 and (_is_filler(tokens[i]) or _bare(tokens[i]) in qwords):
        i += 1
    if i == len(tokens) - 1 and _bare(tokens[-1]) in qwords and not _is_filler(tokens[-1]):
        # Everything repeats the question ("a Navy admiral"): keep it minus the fillers only.
        return _strip_leading(tokens, set())
    return tokens[i:]


def short_answer(
    text: str,
    question: str | None = None,
    max_words: int = 3,
    lowercase: bool = False,
) -> str:
    """The short answer hidden in ``text``, at most ``max_words`` words ("" if there is none).

    ``question`` lets the cut drop what the model merely repeated from the question.
    ``lowercase`` lower-cases the result (VQA scoring normalises case anyway).
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    answer = (text or "").strip().split("\n", 1)[0]
    answer = _PREFIXES.sub("", answer, count=1).strip()
    match = _SENTENCE_END.search(answer)
    if match:
        answer = answer[: match.start()]
    qwords = _question_words(question)

    quoted = [q.strip() for q in _QUOTED.findall(answer) if q.strip()]
    if quoted and len(quoted[0].split()) <= max_words:
        answer = quoted[0]
    clauses = [c.strip() for c in _CLAUSE_END.split(answer) if c.strip(_PUNCT)]
    # "The Eiffel Tower: Gustave Eiffel, the engineer ..." - skip clauses that only echo the question.
    answer = next((c for c in clauses if _novelty(c, qwords) > 0), clauses[0] if clauses else "")

    from_end = False
    if len(answer.split()) > max_words:
        # The main verb, not a relative clause's: "The person who is asked ... is NASA" -> "NASA".
        links = [
            m
            for m in _LINKING.finditer(answer)
            if answer[m.end() :].strip(_PUNCT) and not _RELATIVE.search(answer[: m.start()])
        ]
        if links:
            link = links[0]
            before, after = answer[: link.start()].strip(), answer[link.end() :].strip()
            if not before or _novelty(after, qwords) >= _novelty(before, qwords):
                answer = after
            else:
                answer = before
        elif not answer.strip(_PUNCT)[:1].isdigit():  # a leading count keeps its noun: "2 million people"
            from_end = True  # English puts new information last: "She served in the U.S. Navy"

    tokens = [t for t in answer.split() if t.strip(_PUNCT)]
    tokens = _strip_leading(tokens, qwords) if tokens else tokens
    tokens = tokens[-max_words:] if from_end else tokens[:max_words]
    tokens = _strip_leading(tokens, qwords) if tokens else tokens
    answer = " ".join(tokens).strip(_PUNCT).strip()
    return answer.lower() if lowercase else answer
