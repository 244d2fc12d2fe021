"""What the reader reads of each passage: the whole passage or the sentences around GeMKR's clues."""

from __future__ import annotations

import pytest
from llama_index.core.schema import NodeWithScore, TextNode

from reader.prompt import build_vqa_text, clue_window, format_passages, passage_context, split_sentences

CAT = (
    "The cat (Felis catus) is a small carnivorous mammal. It is the only domesticated species in the family "
    "Felidae. Cats purr when content.\nThe U.S. Navy kept cats on ships. J. Smith studied them in 1990. "
    "Cats sleep a lot."
)


def clued(text: str, *clues: str, node_id: str = "Cat") -> NodeWithScore:
    meta = {"clues": [{"text": c, "score": -0.5 - i, "logprob": -5.0 - i} for i, c in enumerate(clues)]}
    return NodeWithScore(node=TextNode(id_=node_id, text=text, metadata=meta), score=-0.5)


def test_sentences_split_at_sentence_ends_only():
    sentences = split_sentences(" ".join(CAT.split()))
    assert sentences == [
        "The cat (Felis catus) is a small carnivorous mammal.",
        "It is the only domesticated species in the family Felidae.",
        "Cats purr when content.",
        "The U.S. Navy kept cats on ships.",  # no cut after "U.S."
        "J. Smith studied them in 1990.",  # nor after an initial
        "Cats sleep a lot.",
    ]


@pytest.mark.parametrize(
    "clues,window,expected",
    [
        # the clue's sentence and one on each side; "..." where the passage goes on
        ([" the only domesticated species"], 1,
         "The cat (Felis catus) is a small carnivorous mammal. It is the only domesticated species in the "
         "family Felidae. Cats purr when content. ..."),
        (["Cats purr"], 0, "... Cats purr when content. ..."),
        # found case-insensitively and across the passage's line break
        (["CONTENT. The U.S."], 0, "... Cats purr when content. The U.S. Navy kept cats on ships. ..."),
        # two clues: windows merged in passage order, a gap marked between them
        (["J. Smith studied", "the family Felidae"], 0,
         "... It is the only domesticated species in the family Felidae. ... J. Smith studied them in 1990. ..."),
        (["sleep a lot"], 1, "... J. Smith studied them in 1990. Cats sleep a lot."),
        # no clue found in the text: the passage head, 2 * window + 1 sentences
        (["not in this passage"], 1,
         "The cat (Felis catus) is a small carnivorous mammal. It is the only domesticated species in the "
         "family Felidae. Cats purr when content."),
        ([], 0, "The cat (Felis catus) is a small carnivorous mammal."),
    ],
)
def test_clue_window(clues, window, expected):
    assert clue_window(CAT, clues, window) == expected


def test_passage_context_reads_node_clues_and_leaves_nodes_alone():
    hit = clued(CAT, "Cats purr when", "the only domesticated")
    before = (hit.node.get_content(), dict(hit.node.metadata), hit.node.hash)
    window = passage_context(hit.node, "clue_window", 0)
    assert window == "... It is the only domesticated species in the family Felidae. Cats purr when content. ..."
    assert passage_context(hit.node, "passage") == CAT
    assert (hit.node.get_content(), dict(hit.node.metadata), hit.node.hash) == before
    plain = TextNode(id_="Cat", text=CAT)  # no clues (a BM25 hit): the passage head
    assert passage_context(plain, "clue_window", 1) == clue_window(CAT, [], 1)


def test_prompt_with_clue_windows_is_shorter_and_keeps_the_evidence():
    nodes = [clued(CAT, "Cats purr"), NodeWithScore(node=TextNode(id_="Dog", text="Dogs bark. " * 30), score=1.0)]
    full = build_vqa_text("What sound does this animal make?", nodes)
    short = build_vqa_text("What sound does this animal make?", nodes, context="clue_window", clue_window=0)
    assert "[1] Cat: ... Cats purr when content. ..." in short
    assert "[2] Dogs bark.\n" in short and short.count("Dogs bark.") == 1  # head of a clue-less node
    assert len(short) < len(full)


def test_bad_context_and_plain_strings_are_refused():
    with pytest.raises(ValueError, match="context must be one of"):
        format_passages([clued(CAT, "Cats")], context="clues")
    with pytest.raises(ValueError, match="clue_window must be"):
        format_passages([clued(CAT, "Cats")], context="clue_window", clue_window=-1)
    with pytest.raises(TypeError, match="passage 1 is a str, not a LlamaIndex node"):
        format_passages(["The cat is a small mammal."])  # type: ignore[list-item]
