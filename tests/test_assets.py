"""Model names resolve in one place: the packaged SmolLM2 alias, GGUF files by path, folders, hub ids."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gemkr_llamaindex import assets


def test_every_alias_of_the_packaged_model_resolves_to_one_folder():
    folder = assets.resolve_model("smollm2")
    assert all(assets.resolve_model(a) == folder for a in assets.SMOLLM2_ALIASES)
    assert assets.resolve_model(str(assets.smollm2_gguf_path())) == folder  # the packaged GGUF by path too
    with pytest.raises(FileNotFoundError, match="does not exist"):
        assets.resolve_model("./no/such/model.bin")


def test_a_gguf_file_by_path_is_converted_once_into_a_folder(tmp_path, monkeypatch):
    """Any .gguf path works wherever an LLM is taken: converted once (atomically) into the cache."""
    src = assets.smollm2_gguf_path()
    gguf = tmp_path / "models" / "my-llm.gguf"
    gguf.parent.mkdir()
    try:
        os.link(src, gguf)  # same bytes, another path: the generic conversion runs
    except OSError:
        shutil.copy2(src, gguf)
    monkeypatch.setenv("GEMKR_CACHE", str(tmp_path / "cache"))
    folder = assets.resolve_model(str(gguf))
    assert (tmp_path / "cache") in Path(folder).parents
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no half-written folder
    assert assets.resolve_model(str(gguf)) == folder  # the second time: no conversion
    from gemkr_llamaindex.model.llm import load_llm

    model, tok = load_llm(str(gguf))
    packaged = assets.load_tokenizer("smollm2")
    assert tok.get_vocab() == packaged.get_vocab() and model.config.num_hidden_layers == 30
    with pytest.raises(FileNotFoundError, match="GGUF file"):
        assets.resolve_model(str(tmp_path / "missing.gguf"))


def test_packaged_summaries_are_titled_passages_like_dprs(wiki_docs):
    from gemkr_llamaindex.assets import wiki_summaries
    from gemkr_llamaindex.kb.corpus import titled

    by_id = dict(wiki_docs)
    assert by_id["Cat"].startswith("Cat. The cat, also called domestic cat")
    assert by_id["Grace Hopper"].startswith("Grace Hopper. Grace Brewster Hopper was")
    assert by_id["Washington, D.C."].startswith("Washington, D.C. ")  # no second period
    bare = dict(wiki_summaries(with_titles=False))
    assert all(by_id[t] == titled(t, bare[t]) for t in ("Cat", "Moon", "Apple Inc."))
    assert len(bare) == len(by_id) == 10_033


@pytest.mark.parametrize("damage", ["truncated", "header-only", "garbage", "bad-string"])
def test_a_damaged_gguf_file_is_an_error_naming_it(damage, tmp_path, monkeypatch):
    """A truncated or garbage GGUF failed deep in the reader (struct.error, UnicodeDecodeError) without its name."""
    monkeypatch.setenv("GEMKR_CACHE", str(tmp_path / "cache"))
    data = assets.smollm2_gguf_path().read_bytes()
    # GGUF v3: magic, version, tensor count, kv count, then the first key as (uint64 length, bytes)
    bad = {"truncated": data[:100_000], "header-only": data[:15], "garbage": os.urandom(3000),
           "bad-string": data[:24] + b"\xff\xfe\xfd" + data[27:100_000]}[damage]
    path = tmp_path / f"{damage}.gguf"
    path.write_bytes(bad)
    with pytest.raises(ValueError, match=f"{damage}.gguf"):
        assets.resolve_model(str(path))
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # nothing half-written
