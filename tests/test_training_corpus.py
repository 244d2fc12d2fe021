"""Training without labelled queries: pseudo-queries made from the corpus, and a model without a vision tower."""

from __future__ import annotations

import json
import re

import pytest
import torch

from gemkr_llamaindex.kb import KnowledgeBase
from gemkr_llamaindex.model.gemkr import GeMKRModel
from gemkr_llamaindex.model.tiny import build_tiny_llm
from gemkr_llamaindex.training.corpus_queries import (
    VISUAL_KINDS,
    EntityReader,
    PseudoQueryBuilder,
    corpus_training_queries,
)
from gemkr_llamaindex.training.wordnet import WordNet

DOCS = [
    ("Cat", "The cat, also called domestic cat and house cat, is a small domesticated carnivorous mammal. "
            "It is the only domesticated species of the family Felidae. Cats purr when they are content."),
    ("Grace Hopper", "Grace Brewster Hopper was an American computer scientist and United States Navy rear "
                     "admiral. She was a pioneer of computer programming and helped develop COBOL in 1959."),
    ("Madrid", "Madrid is the capital and most populous city of Spain. It lies on the River Manzanares in "
               "the central part of the Iberian Peninsula."),
    ("Moon landing", "A Moon landing is the arrival of a spacecraft on the surface of the Moon."),
    ("Long", "Long is a word " + "and a word " * 20 + "in one sentence that is far too long to ask a cloze question about."),
]
META = {"Cat": {"description": "Small domesticated carnivorous mammal", "topic": "Biology"},
        "Grace Hopper": {"description": "American computer scientist (1906-1992)", "topic": "People"}}

# A few synsets in WordNet's own data.noun / index.noun format (offsets as in WordNet 3.0).
DATA_NOUN = """  1 This fixture has WordNet's header lines, which the reader skips.
02121620 05 n 02 cat 0 true_cat 0 003 @ 02120997 n 0000 ~ 02121808 n 0000 ~ 02124272 n 0000 | feline mammal usually having thick soft fur
02121808 05 n 02 domestic_cat 0 house_cat 0 002 @ 02121620 n 0000 ~ 02123159 n 0000 | any domesticated member of the genus Felis
02123159 05 n 01 tiger_cat 0 001 @ 02121808 n 0000 | a cat having a striped coat
02124272 05 n 01 wildcat 0 001 @ 02121620 n 0000 | any small or medium-sized cat resembling the domestic cat
02120997 05 n 02 feline 0 felid 0 002 @ 02075296 n 0000 ~ 02121620 n 0000 | any of various lithe-bodied roundheaded fissiped mammals
02075296 05 n 01 carnivore 0 001 ~ 02120997 n 0000 | a terrestrial or aquatic flesh-eating mammal
08981244 15 n 01 Madrid 0 001 @i 08524735 n 0000 | the capital and largest city of Spain
08524735 15 n 02 city 0 metropolis 0 001 ~i 08981244 n 0000 | a large and densely populated urban area
"""
INDEX_NOUN = """  1 header
cat n 1 2 @ ~ 1 0 02121620
domestic_cat n 1 2 @ ~ 1 0 02121808
tiger_cat n 1 1 @ 1 0 02123159
madrid n 1 1 @ 1 0 08981244
city n 1 1 ~ 1 0 08524735
"""


@pytest.fixture()
def wordnet(tmp_path):
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    (tmp_path / "index.noun").write_text(INDEX_NOUN)
    return WordNet(tmp_path)


def _records(docs=DOCS, meta=None):
    return [{"id": d, "text": t, "title": d, **(meta or {}).get(d, {})} for d, t in docs]


def test_wordnet_reader_on_its_own_file_format(wordnet):
    cat = wordnet.lookup("Cat")[0]
    assert cat.lexname == "noun.animal" and cat.lemmas == ["cat", "true cat"] and cat.gloss.startswith("feline")
    assert [s.name for s in wordnet.hypernym_closure(wordnet[2123159])] == ["domestic cat", "cat", "feline", "carnivore"]
    assert {s.name for s in wordnet.hyponym_closure(cat)} == {"domestic cat", "wildcat", "tiger cat"}
    assert wordnet.lookup("Madrid")[0].hypernyms == [8524735]  # instance hypernyms count


def test_entities_without_wordnet_come_from_titles_descriptions_and_text():
    ents = EntityReader().read(_records(meta=META))
    cat, hopper, madrid = ents["Cat"], ents["Grace Hopper"], ents["Madrid"]
    assert cat.names == ["Cat", "domestic cat", "house cat"] and cat.named == "the cat"
    assert cat.kinds[0] == "mammal"  # the description's head noun
    assert hopper.kinds[0] == "woman" and "scientist" in hopper.kinds and hopper.named == "Grace Hopper"
    assert madrid.named == "Madrid" and madrid.kinds  # proper names stay as written


def test_wordnet_adds_kinds_kinds_of_tags_and_imagenet_classes(wordnet):
    ents = EntityReader(wordnet, imagenet=[(2123159, "tiger cat"), (8981244, "Madrid skyline")]).read(_records())
    cat = ents["Cat"]
    assert "animal" in cat.kinds and all(k in VISUAL_KINDS for k in cat.kinds)  # "feline" is no picture word
    assert {"tiger cat", "wildcat", "true cat"} <= set(cat.tags)  # what a person says about a cat picture
    assert cat.labels == ["tiger cat"]  # the classifier's class WordNet files under the document
    assert "Madrid skyline" in ents["Madrid"].labels


def test_pseudo_queries_are_well_formed_and_point_at_their_document(wordnet):
    ents = EntityReader(wordnet).read(_records(meta=META))
    queries = PseudoQueryBuilder(ents, named=3, pictured=5, seed=1, distractors=["bobsled"]).all_queries()
    assert len(queries) == 8 * len(DOCS)
    by_doc: dict[str, list] = {}
    for q in queries:
        assert q.image is None and len(q.positive_doc_ids) == 1 and q.question.strip().endswith(("?", "."))
        by_doc.setdefault(q.positive_doc_ids[0], []).append(q)
    for doc_id, qs in by_doc.items():
        pictured = [q for q in qs if "#p" in q.id]
        named = [q for q in qs if "#n" in q.id]
        assert len(pictured) == 5 and len(named) == 3
        assert all(q.tags is None for q in named)  # text-only questions carry no visual tags
        assert any(q.tags for q in pictured)
        for q in pictured:  # a pictured question never names its entity outside the tags slot
            named_in = re.search(rf"\b{re.escape(ents[doc_id].title)}\b", q.question, re.IGNORECASE)
            assert not named_in or doc_id == "Moon landing"  # ("domesticated" holds "cat", not the cat)


def test_described_questions_ask_for_the_entity_by_a_fact_of_its_text(wordnet):
    """The entity is the asked-for span: its document's sentence with the subject (name or pronoun) turned
    into a question word, never one that still names it; they come on top of the other kinds."""
    ents = EntityReader(wordnet).read(_records(meta=META))
    plain = PseudoQueryBuilder(ents, named=1, pictured=2, seed=4).all_queries()
    assert not [q for q in plain if "#d" in q.id]  # opt-in
    queries = PseudoQueryBuilder(ents, named=1, pictured=2, seed=4, described=3).all_queries()
    assert len([q for q in queries if "#d" not in q.id]) == len(plain)
    described = {}
    for q in queries:
        if "#d" in q.id:
            assert q.tags is None and q.question.endswith("?")
            described.setdefault(q.positive_doc_ids[0], []).append(q.question)
    assert len(described["Madrid"]) == 2 and set(described["Madrid"]) <= {
        "Which city is the capital and most populous city of Spain?",
        "What is the capital and most populous city of Spain?",
        "Which city lies on the River Manzanares in the central part of the Iberian Peninsula?",
        "What lies on the River Manzanares in the central part of the Iberian Peninsula?"}
    # "Grace Brewster Hopper was ..." does not open with a name the reader knows, "She was ..." does
    assert described["Grace Hopper"] == ["Who was a pioneer of computer programming and helped develop COBOL in 1959?"]
    for doc_id, questions in described.items():
        for question in questions:
            assert not any(re.search(rf"\b{re.escape(n)}\b", question, re.IGNORECASE) for n in ents[doc_id].names)
    assert all(len(q.split()) <= 17 for qs in described.values() for q in qs)  # cut to 16 words of text
    assert "Long" not in described  # its one sentence is too long to ask about
    with pytest.raises(ValueError, match="described=-1"):
        PseudoQueryBuilder(ents, described=-1)


def test_simulated_tags_say_what_a_classifier_and_ocr_would(wordnet):
    classes = [(2123159, "tiger cat"), (0, "military uniform"), (1, "soup bowl"), (2, "bobsled")]
    docs = [(d, f"{d}. {t}") for d, t in DOCS]  # DPR-style titled passages read like bare ones
    docs[1] = ("Grace Hopper", docs[1][1] + " She often wore her military uniform.")
    ents = EntityReader(wordnet, imagenet=classes).read(_records(docs, META))
    assert ents["Cat"].names == ["Cat", "domestic cat", "house cat"]  # the title prefix is not the first sentence
    assert ents["Cat"].labels == ["tiger cat"] and ents["Grace Hopper"].scene == ["military uniform"]
    builder = PseudoQueryBuilder(ents, named=0, pictured=40, seed=3, ocr_rate=0.0, person_rate=0.0,
                                 no_tags_rate=0.0, distractors=["soup bowl", "bobsled"])
    for doc_id, ent in ents.items():
        for q in builder.queries(doc_id):
            tags = q.tags.split(", ")
            assert not {n.lower() for n in ent.names} & {t.lower() for t in tags}  # no OCR: the name never leaks
            assert set(tags) <= set(ent.labels + ent.scene + ["soup bowl", "bobsled"])
    cat_tags = [q.tags for q in builder.queries("Cat")]
    assert all("tiger cat" in t for t in cat_tags)  # the class filed under the entity, every time
    assert len(cat_tags) == 40 + 4 and len(builder.queries("Madrid")) == 40  # photos are mostly of picturable things
    reading = PseudoQueryBuilder(ents, named=0, pictured=60, seed=3, ocr_rate=1.0, no_tags_rate=0.0,
                                 distractors=["bobsled"])
    read = [any(n in q.tags for n in ents["Madrid"].names) for q in reading.queries("Madrid")]
    assert 0.2 < sum(read) / len(read) < 0.7  # OCR reads the name sometimes, other text otherwise


def test_long_cloze_questions_keep_the_words_around_the_asked_span():
    from gemkr_llamaindex.training.corpus_queries import _window

    long = ("This animal is an obligate carnivore requiring a predominantly meat-based diet and hunting small "
            "prey such as what at night")
    short = _window(long)
    assert short.startswith("This animal is an") and short.endswith("such as what at night")
    assert len(short.split()) <= 16 and _window("This animal is a member of what") == "This animal is a member of what"


def test_corpus_queries_from_the_kb_alone_and_their_clues(tmp_path, smollm2_tokenizer):
    from gemkr_llamaindex.training.clues import ClueSampler
    from gemkr_llamaindex.training.data import build_examples

    kb = KnowledgeBase.build(DOCS, smollm2_tokenizer, tmp_path / "kb", show_progress=False)
    queries = corpus_training_queries(kb, named=1, pictured=2, wordnet="none", imagenet=False)
    assert {q.positive_doc_ids[0] for q in queries} == {d for d, _ in DOCS}
    sampler = ClueSampler(kb, m=1, length=6, seed=0)
    for mode in ("sampled", "doc_start", "mixed"):
        examples = build_examples(queries, sampler, mode, end_token_id=smollm2_tokenizer.eos_token_id)
        assert examples
        for e in examples:  # every clue comes from its own document
            doc = kb.doc_tokens(e.doc_id).tolist()
            clue = [t for t in e.clue_ids if t != smollm2_tokenizer.eos_token_id]
            assert any(doc[i : i + len(clue)] == clue for i in range(len(doc)))
            if mode == "doc_start":
                assert doc[: len(clue)] == clue
    with pytest.raises(ValueError, match="clue_mode"):
        build_examples(queries, sampler, "random")


# ---------------------------------------------------------------------------------------------- no vision tower
def test_a_model_without_vision_tower_trains_saves_loads_and_retrieves(tmp_path, smollm2_tokenizer):
    import yaml

    from gemkr_llamaindex.llamaindex import ClueGenerator, GeMKRRetriever
    from gemkr_llamaindex.training.trainer import TrainConfig, train

    llm = build_tiny_llm(tmp_path / "llm")
    KnowledgeBase.build(DOCS, str(llm), tmp_path / "kb", show_progress=False)
    cfg = {"kb_dir": str(tmp_path / "kb"), "output_dir": str(tmp_path / "run"), "corpus_queries": {"wordnet": "none",
           "named": 1, "pictured": 1, "imagenet": False}, "clue_mode": "doc_start", "clue_length": 4,
           "model": {"llm": str(llm), "clip_model": None, "clip_pretrained": None}, "batch_size": 4, "lr": 5e-3,
           "warmup_steps": 1, "max_steps": 6, "save_every": 3, "decoding": {"anchor": "doc_start", "min_length": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    final = train(TrainConfig.from_yaml(tmp_path / "c.yaml"), verbose=False)
    assert json.loads((final / "decoding.json").read_text())["anchor"] == "doc_start"
    assert (tmp_path / "run" / "losses.json").is_file() and (tmp_path / "run" / "loss_curve.png").is_file()
    model = GeMKRModel.from_pretrained(final)
    assert not model.has_vision and model.tower is None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)  # only LoRA: no random ViT rides along
    assert "### Image:" not in model.template.render("q?", "tags", image_slot=False)
    gen = ClueGenerator.from_checkpoint(final)
    assert gen.config.anchor == "doc_start" and gen.config.min_length == 2  # the checkpoint's decoding
    # init_from: a new run starts from this one's weights (here with a vanishing learning rate, since 0 is refused:
    # one AdamW step moves each weight by about lr, far below its float32 spacing, so they stay as they are)
    again = {**cfg, "output_dir": str(tmp_path / "run2"), "init_from": str(final), "lr": 1e-30, "max_steps": 1}
    from safetensors.torch import load_file

    second = train(TrainConfig.from_dict(again), verbose=False)
    first_w, second_w = load_file(str(final / "trainable.safetensors")), load_file(str(second / "trainable.safetensors"))
    assert first_w.keys() == second_w.keys()
    assert all(torch.allclose(first_w[k], second_w[k], rtol=0, atol=1e-20) for k in first_w)
    kb = KnowledgeBase.open(tmp_path / "kb")
    hits = GeMKRRetriever(gen, kb, similarity_top_k=2).retrieve("Where does the capital of Spain lie?")
    assert hits
    for h in hits:  # anchored clues are document openings
        clue = kb.encode(h.node.metadata["clues"][0]["text"])
        assert kb.doc_tokens(h.node.node_id).tolist()[: len(clue)] == clue


def test_text_only_queries_use_the_learned_no_image_input(tmp_path):
    from gemkr_llamaindex.model.tiny import tiny_config

    model = GeMKRModel(tiny_config(build_tiny_llm(tmp_path / "llm"))).eval()
    from PIL import Image

    black = Image.new("RGB", (64, 64))
    with torch.no_grad():
        none = model.prompt_embeds(["What is this?"], images=[None])
        pic = model.prompt_embeds(["What is this?"], images=[black])
    assert none.attention_mask.shape == pic.attention_mask.shape  # same slots, other content
    slot = (none.inputs_embeds[0] == model.alignment.no_image).all(-1)
    assert slot.sum() == 1  # exactly one position holds the learned "no image" embedding
    assert not (pic.inputs_embeds[0] == model.alignment.no_image).all(-1).any()  # a black picture is another input
    # and it learns: a text-only training row gives it a gradient
    model.train()
    out = model(["What is this?"], [[model.tokenizer.eos_token_id]], images=[None])
    out.loss.backward()
    assert model.alignment.no_image.grad is not None and model.alignment.no_image.grad.abs().sum() > 0


def test_a_checkpoint_detector_outside_its_folder_is_refused(tmp_path):
    from gemkr_llamaindex.model.tiny import tiny_config

    model = GeMKRModel(tiny_config(build_tiny_llm(tmp_path / "llm")))
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((ckpt / "gemkr_config.json").read_text())
    meta["config"]["detector"] = str(tmp_path / "elsewhere.pt")
    (ckpt / "gemkr_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="outside its folder"):
        GeMKRModel.from_pretrained(ckpt)


# ---------------------------------------------------------------------------------------------- several processes
def test_two_process_training_under_accelerate_matches_one_process(tmp_path):
    """``accelerate launch`` of ``gemkr train`` with two CPU processes (gloo): each takes half of every global
    batch, DDP averages the gradients, and the losses equal a single process's within tolerance."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    llm = build_tiny_llm(tmp_path / "llm")
    docs = [(f"d{i}", f"Document number {i} tells about topic {i} and its many details at length.") for i in range(8)]
    KnowledgeBase.build(docs, str(llm), tmp_path / "kb", show_progress=False)

    def config(name):
        cfg = {"kb_dir": str(tmp_path / "kb"), "output_dir": str(tmp_path / name),
               "corpus_queries": {"wordnet": "none", "named": 1, "pictured": 1, "imagenet": False},
               "clue_mode": "doc_start", "clue_length": 4,  # equal clue lengths: per-rank means average exactly
               "model": {"llm": str(llm), "clip_model": None, "clip_pretrained": None}, "batch_size": 4,
               "lr": 5e-3, "warmup_steps": 1, "max_steps": 3, "save_every": 0, "max_grad_norm": None}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    one = subprocess.run([sys.executable, "-m", "gemkr_llamaindex.cli", "train", "--config", str(config("one"))],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    two = subprocess.run([launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--module", "gemkr_llamaindex.cli",
                          "train", "--config", str(config("two"))], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "losses.json").read_text())["losses"]
    b = json.loads((tmp_path / "two" / "losses.json").read_text())["losses"]
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    wa = GeMKRModel.from_pretrained(tmp_path / "one" / "final").trainable_state_dict()
    wb = GeMKRModel.from_pretrained(tmp_path / "two" / "final").trainable_state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_packaged_checkpoint_is_found_by_corpus_fingerprint_and_never_a_swap_leftover(tmp_path, monkeypatch):
    from gemkr_llamaindex import checkpoints

    docs = [("a", "alpha text"), ("b", "beta text")]
    for name in ("wiki", ".wiki.old-123", ".wiki.tmp"):  # the shipped folder and what an interrupted swap leaves
        (tmp_path / name).mkdir()
        (tmp_path / name / "gemkr_config.json").write_text("{}")
        (tmp_path / name / checkpoints.CORPUS_FILE).write_text(json.dumps(checkpoints.corpus_fingerprint(docs)))
    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path)
    assert checkpoints.packaged_checkpoint_for(docs) == tmp_path / "wiki"
    assert checkpoints.packaged_checkpoint_for([("a", "alpha text"), ("b", "other")]) is None
    assert checkpoints.packaged_checkpoint_for(docs[:1]) is None


def test_recall_split_by_tags_naming_the_entity_or_a_kind_of_it_and_by_question(wordnet, tmp_path):
    """``eval_vqa.analysis`` (what ``benchmarks/recall_split.py`` runs): tags are on target when one names a
    gold document or WordNet files it under one, a question names its gold document when the title is in
    it; the run's items are split by such a rule and each side's recall is its own items' mean."""
    import json

    from eval_vqa.analysis import question_names_gold, split_table, tags_on_target

    assert tags_on_target("bubble, tiger cat", ["Cat"], wordnet)  # tiger cat -> domestic cat -> cat
    assert tags_on_target("Madrid", ["madrid"], None)  # an exact title needs no WordNet
    assert not tags_on_target("tiger cat", ["Cat"], None)
    assert not tags_on_target("bubble, city", ["Madrid"], wordnet)  # a hypernym of the entity is not it
    assert not tags_on_target(None, ["Cat"], wordnet)
    assert not tags_on_target("tiger cat", ["Cat"], wordnet, depth=1)
    assert question_names_gold("What makes up most of the mass of galaxies?", ["Galaxy"])
    assert question_names_gold("Where did Grace Hopper serve?", ["Grace Hopper"])
    assert question_names_gold("How fast do rockets go?", ["Rocket (weapon)"])  # the qualifier is not asked for
    assert not question_names_gold("Which sensory organ does the retina belong to?", ["Human eye", "Eye"])
    assert not question_names_gold("Is a catalogue a cat?", ["Catalog"])  # whole words only

    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "image": None, "question": "What is this?", "answers": ["x"],
                                           "gold_doc_ids": [g]}) + "\n" for i, g in enumerate(["Cat", "Cat", "Madrid"])))
    run = tmp_path / "run"
    run.mkdir()
    (run / "tags.jsonl").write_text("".join(json.dumps({"qid": q, "tags": t}) + "\n"
                                            for q, t in [("q0", "tiger cat"), ("q1", "bubble"), ("q2", "Madrid")]))
    hits = {("a", "q0"): (1, 1), ("a", "q1"): (0, 1), ("a", "q2"): (0, 0), ("b", "q0"): (0, 1), ("b", "q1"): (0, 0),
            ("b", "q2"): (1, 1)}
    (run / "per_query.jsonl").write_text("".join(
        json.dumps({"retriever": r, "qid": q, "metrics": {"R@1 (gold)": h1, "R@10 (gold)": h10}}) + "\n"
        for (r, q), (h1, h10) in hits.items()))
    table = split_table(run, queries, wordnet).splitlines()
    assert table[0] == "| retriever | tags on target (2) R@1 / R@10 | tags off target (1) R@1 / R@10 |"
    assert table[2:] == ["| a | 50.0 / 50.0 | 0.0 / 100.0 |", "| b | 50.0 / 100.0 | 0.0 / 0.0 |"]
    by_question = split_table(run, queries, by="question").splitlines()  # no question names a title
    assert by_question[0].endswith("| question names another (3) R@1 / R@10 |")
    assert by_question[2] == "| a | - | 33.3 / 66.7 |"
    with pytest.raises(ValueError, match="pass --queries"):
        queries.write_text(queries.read_text().splitlines()[0] + "\n")
        split_table(run, queries, wordnet)
