"""Short-answer post-processing: a pure function, checked on a table of real-looking generations."""

from __future__ import annotations

import pytest

from reader.postprocess import short_answer

# (generation, question, expected short answer) - generations are what SmolLM2-135M actually tends to
# produce for such prompts, plus formatting cases.
CASES = [
    # prefixes, lines, sentence ends, trailing punctuation
    ("Paris", None, "Paris"),
    ("  Paris.  ", None, "Paris"),
    ("Answer: Espresso!\nSecond line that is ignored.", None, "Espresso"),
    ("The answer is Paris.", None, "Paris"),
    ("The answer to the question is: espresso.", "What is in the cup?", "espresso"),
    ("Based on the passages, the capital of France is Paris.", "What is the capital of France?", "Paris"),
    ("yes, it is.", "Is this a cat?", "yes"),
    # linking verb: keep the side the question did not already say
    ("The capital of France is Paris.", "What is the capital of France?", "Paris"),
    ("Paris is the capital of France.", "What city is this?", "Paris"),
    ("The Eiffel Tower is located in Paris, France.", "In which city is this tower?", "Paris"),
    ("The animal belongs to the family Felidae.", "What family does this animal belong to?", "Felidae"),
    (
        "The only natural satellite of Earth is the Moon.",
        "What is the only natural satellite of Earth?",
        "Moon",
    ),
    ("This drink contains espresso, which is a type of coffee", "What does this drink contain?", "espresso"),
    ("The Eiffel Tower was designed by Gustave Eiffel.", "Who designed the Eiffel Tower?", "Gustave Eiffel"),
    (
        "The Eiffel Tower: Gustave Eiffel, the engineer who designed it.",
        "Who designed the Eiffel Tower?",
        "Gustave Eiffel",
    ),
    ("Paris, France", "Which city?", "Paris"),
    # everything echoes the question: keep it rather than return nothing
    ("The woman was a Navy admiral.", "What navy was this woman an admiral in?", "Navy admiral"),
    ("The car is red.", "Is the car red or blue?", "red"),
    # no linking verb: new information comes last; a leading number keeps its noun
    ("She served in the U.S. Navy.", "Which navy?", "U.S. Navy"),
    (
        "The answer is: 2.04 million people live there",
        "How many people live in Paris?",
        "2.04 million people",
    ),
    # quotes, passage markers, markdown, relative clauses, participles (real SmolLM2-135M outputs)
    (
        'specifically called "Checkers" or "Dra',
        "Which board game is played on a board like this?",
        "Checkers",
    ),
    (
        "The answer is: [2] The bus runs on the River Manzanares.",
        "On which river does the city lie?",
        "Manzanares",
    ),
    ("The answer to this question is: **A. Commander**", "What rank did this officer reach?", "Commander"),
    ("The person who is asked to answer the question is NASA.", "Which space agency is it?", "NASA"),
    (
        "The image was taken using a microscope.",
        "Which instrument was used to take this image?",
        "microscope",
    ),
    # nothing there
    ("", "What is this?", ""),
    ("...", None, ""),
]


@pytest.mark.parametrize("text,question,expected", CASES)
def test_short_answer_table(text: str, question: str | None, expected: str) -> None:
    assert short_answer(text, question) == expected


@pytest.mark.parametrize("text,question,_", CASES)
def test_short_answer_never_exceeds_the_word_limit(text: str, question: str | None, _: str) -> None:
    for limit in (1, 2, 3):
        assert len(short_answer(text, question, max_words=limit).split()) <= limit


def test_short_answer_options() -> None:
    assert short_answer("She served in the U.S. Navy.", max_words=1) == "Navy"
    assert (
        short_answer("The capital of France is Paris, a city on the Seine.", "What is the capital?", 1)
        == "Paris"
    )
    assert short_answer("Gustave Eiffel.", lowercase=True) == "gustave eiffel"
    with pytest.raises(ValueError, match="max_words"):
        short_answer("Paris", max_words=0)
