"""A checkpoint is data, never code: detector payloads never run, loading never reaches the network, and
damaged or ill-typed checkpoints are refused with errors that name the file and the key.

Every payload here is live: :func:`test_the_payloads_are_live` shows each one running when handed to
ultralytics or torch the way the library once did; the other tests show the library never runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gemkr_llamaindex.model.gemkr import GeMKRModel
from gemkr_llamaindex.model.tiny import build_tiny_llm, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
# find_spec, not importorskip: importing ultralytics here, before the library configures it, would write ~/.config
needs_yolo = pytest.mark.skipif(find_spec("ultralytics") is None, reason="needs the [yolo] extra")


class _Payload:
    """Unpickling this creates the folder ``marker``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def _yolov8_yaml() -> str:
    """ultralytics' own yolov8 architecture text, located without importing ultralytics."""
    return (Path(find_spec("ultralytics").submodule_search_locations[0]) / "cfg/models/v8/yolov8.yaml").read_text()


def plant_payloads(root: Path) -> dict[str, tuple[Path, Path]]:
    """Each payload form as ``{name: (file, marker)}``; the marker folder appears if its code runs."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, file_name in (("pt", "det.pt"), ("PT", "evil.PT"), ("pt-dot", "x.pt")):
        path, marker = root / name / file_name, root / f"ran-{name}"
        path.parent.mkdir()
        torch.save({"model": _Payload(marker)}, path)
        out[name] = (path, marker)
    marker = root / "ran-activation"
    (root / "activation.yaml").write_text(_yolov8_yaml() + f"\nactivation: __import__('os').makedirs({str(marker)!r})\n")
    out["yaml-activation"] = (root / "activation.yaml", marker)
    marker = root / "ran-layer"
    torch.save({"model": _Payload(marker)}, root / "layer-payload.pt")
    arg = json.dumps(repr(str(root / "layer-payload.pt")))  # ultralytics literal_eval()s string arguments
    layers = _yolov8_yaml().replace("backbone:\n", f"backbone:\n  - [-1, 1, torch_load, [{arg}]]\n", 1)
    (root / "layer.yaml").write_text(layers)  # ultralytics calls whatever a layer names: here its own torch_load
    out["yaml-layer"] = (root / "layer.yaml", marker)
    return out


@needs_yolo
def test_the_payloads_are_live(tmp_path):
    """Handed to torch / ultralytics as the library once did (pickle loading on, no safe mode), each payload runs."""
    payloads = plant_payloads(tmp_path / "p")
    code = (
        "import sys, torch, ultralytics\n"
        "torch.load(sys.argv[1], weights_only=False)\n"
        "for yaml in sys.argv[2:]:\n"
        "    try:\n"
        "        ultralytics.YOLO(yaml)\n"
        "    except Exception:\n"
        "        pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ULTRALYTICS_SAFE_LOAD"}
    (tmp_path / "cfg").mkdir()
    env.update(YOLO_CONFIG_DIR=str(tmp_path / "cfg"), YOLO_OFFLINE="1", YOLO_VERBOSE="False")
    subprocess.run([sys.executable, "-c", code, str(payloads["pt"][0]), str(payloads["yaml-activation"][0]),
                    str(payloads["yaml-layer"][0])], env=env, check=True, capture_output=True, timeout=300)
    assert all(payloads[k][1].is_dir() for k in ("pt", "yaml-activation", "yaml-layer"))


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


@pytest.fixture(scope="module")
def saved(llm_dir, tmp_path_factory):
    """A checkpoint of a tiny model with a vision tower and no detector."""
    return GeMKRModel(tiny_config(llm_dir)).save_pretrained(tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture()
def picture(tmp_path):
    path = tmp_path / "query.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def _copy(saved: Path, dest: Path, **config_changes) -> Path:
    shutil.copytree(saved, dest)
    meta = json.loads((dest / "gemkr_config.json").read_text())
    meta["config"].update(config_changes)
    (dest / "gemkr_config.json").write_text(json.dumps(meta))
    return dest


@pytest.mark.parametrize("form", ["pt", "PT", "pt-dot", "yaml-activation", "yaml-layer", "yaml-outside"])
@needs_yolo
def test_a_detector_named_by_a_checkpoint_never_runs_code(form, saved, tmp_path, picture):
    """``det.pt`` inside the folder, ``evil.PT`` and ``x.pt/.`` outside it (the old check compared the suffix
    with case and did not normalise the path), a YAML ``activation`` and a YAML layer that names a function:
    loading the checkpoint and answering a query with a picture never runs them, and says why."""
    payloads = plant_payloads(tmp_path / "payloads")
    payload, marker = payloads.get(form, (None, None))
    ckpt = Path(shutil.copytree(saved, tmp_path / "ckpt"))
    if form == "pt":  # inside the checkpoint folder
        shutil.copy(payload, ckpt / "det.pt")
        detector = "det.pt"
    elif form == "yaml-outside":  # YAML detectors were not checked at all
        payload, marker = payloads["yaml-activation"]
        detector = str(payload)
    elif form.startswith("yaml"):
        shutil.copy(payload, ckpt / "det.yaml")
        detector = "det.yaml"
    else:  # outside, by a path the old check let through
        detector = str(payload) + ("/." if form == "pt-dot" else "")
    meta = json.loads((ckpt / "gemkr_config.json").read_text())
    meta["config"]["detector"] = detector
    (ckpt / "gemkr_config.json").write_text(json.dumps(meta))
    match = {"pt": "pickle-based", "PT": "outside its folder", "pt-dot": "outside its folder",
             "yaml-activation": "activation .* refused", "yaml-layer": "torch_load.*not a torch.nn.Module layer",
             "yaml-outside": "outside its folder"}[form]
    with pytest.raises(ValueError, match=match):
        GeMKRModel.from_pretrained(ckpt).visual_inputs([picture])
    assert not marker.exists(), "the payload ran"


@needs_yolo
@pytest.mark.parametrize("form", ["yaml-activation", "yaml-layer"])
def test_a_yaml_detector_the_caller_passes_is_read_as_data(form, saved, tmp_path, picture):
    """Passed explicitly, a YAML architecture is still parsed, never evaluated: its payload does not run."""
    payload, marker = plant_payloads(tmp_path / "payloads")[form]
    with pytest.raises(ValueError, match="refused|not a torch.nn.Module layer"):
        GeMKRModel.from_pretrained(saved, detector=str(payload)).visual_inputs([picture])
    assert not marker.exists(), "the payload ran"


@needs_yolo
def test_a_pickle_detector_loads_only_when_the_caller_passes_it_and_says_it_trusts_it(saved, tmp_path, picture):
    from gemkr_llamaindex.model.detector import YOLODetector
    from gemkr_llamaindex.ultralytics_env import UntrustedModelFileError, load_yolo

    weights = tmp_path / "trained.pt"
    load_yolo("yolov8n.yaml").save(str(weights))  # a real ultralytics .pt (what training writes)
    with pytest.raises(UntrustedModelFileError, match="pickle-based"):
        GeMKRModel.from_pretrained(saved, detector=str(weights))
    with pytest.raises(UntrustedModelFileError, match="pickle-based"):
        YOLODetector(weights)
    with pytest.raises(ValueError, match="never to the one a checkpoint names"):
        GeMKRModel.from_pretrained(saved, trust_detector_pickle=True)
    model = GeMKRModel.from_pretrained(saved, detector=str(weights), detector_conf=0.0, trust_detector_pickle=True)
    features = model.visual_inputs([picture])
    assert features.object_mask.all()  # conf 0: every slot holds a box of the trusted detector

    # Saved, the detector travels as safetensors; the checkpoint loads with no trust and gives the same features.
    out = model.save_pretrained(tmp_path / "with-detector")
    assert json.loads((out / "gemkr_config.json").read_text())["config"]["detector"] == "detector.safetensors"
    assert not list(out.glob("*.pt"))
    again = GeMKRModel.from_pretrained(out)
    assert torch.equal(again.visual_inputs([picture]).object_features, features.object_features)


@needs_yolo
def test_a_yolo_safetensors_export_gives_the_same_boxes(tmp_path, picture):
    from gemkr_llamaindex.model.detector import make_detector

    yaml_detector = make_detector("yolov8n.yaml", conf=0.0, max_objects=5)
    path = yaml_detector.save_safetensors(tmp_path / "det.safetensors")
    restored = make_detector(path, conf=0.0, max_objects=5)
    image = Image.open(picture).convert("RGB")
    assert restored.detect(image) == yaml_detector.detect(image)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="det.safetensors"):
        make_detector(path)


# ---------------------------------------------------------------- the network


@pytest.fixture()
def no_network(monkeypatch):
    """Every connection or name lookup is recorded and fails."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"clip_pretrained": "openai"}, "clip_pretrained 'openai' is not a local file"),
     ({"clip_model": "hf-hub:timm/ViT-B-16-SigLIP", "clip_model_cfg": None}, "hub name"),
     ({"llm": "HuggingFaceTB/SmolLM2-360M-Instruct"}, "hub id that is not in the local cache"),
     ({"clip_model_cfg": {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
                          "text_cfg": {"hf_model_name": "bert-base-uncased"}}}, "hf_model_name names hub weights")],
)
def test_loading_never_reaches_the_network(changes, match, llm_dir, saved, tmp_path, no_network):
    ckpt = _copy(saved, tmp_path / "ckpt", **changes)
    with pytest.raises(ValueError, match=match) as err:
        GeMKRModel.from_pretrained(ckpt)
    assert "allow_download=True" in str(err.value)
    with pytest.raises(ValueError, match=match):
        GeMKRModel(tiny_config(llm_dir, **changes))
    assert no_network == []


def test_the_defaults_name_nothing_remote(no_network, tmp_path, monkeypatch):
    """A training YAML with ``model: {}`` gets the defaults: the packaged SmolLM2 and no vision tower."""
    from gemkr_llamaindex.model.config import GeMKRConfig
    from gemkr_llamaindex.model.vision import check_clip_is_local

    config = GeMKRConfig.from_dict({})
    assert config.llm == "smollm2" and config.clip_pretrained is None
    if config.clip_model is not None:
        check_clip_is_local(config.clip_model, config.clip_pretrained, config.clip_model_cfg)
    assert GeMKRModel(config).num_parameters()[0] > 0
    assert no_network == []


def test_a_clip_architecture_name_cannot_write_outside_the_cache(llm_dir, tmp_path):
    cfg = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    with pytest.raises(ValueError, match="architecture name"):
        GeMKRModel(tiny_config(llm_dir, clip_model=f"../../{tmp_path.name}/escaped", clip_model_cfg=cfg))
    assert not list(tmp_path.parent.rglob("escaped.json"))


# ---------------------------------------------------------------- damaged and ill-typed checkpoints


def test_weights_are_checked_against_their_checksum_and_for_damage(saved, tmp_path):
    weights = "trainable.safetensors"
    flipped = _copy(saved, tmp_path / "flipped")
    data = bytearray((flipped / weights).read_bytes())
    data[-5] ^= 0x40  # a byte of tensor data: the file still parses
    (flipped / weights).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"flipped/trainable\.safetensors: its SHA-256 differs"):
        GeMKRModel.from_pretrained(flipped)

    truncated = _copy(saved, tmp_path / "truncated")
    (truncated / weights).write_bytes((truncated / weights).read_bytes()[:-64])
    meta = json.loads((truncated / "gemkr_config.json").read_text())
    del meta["files"]
    meta["format_version"] = 2  # as written before checksums: the file is still read, and its damage named
    (truncated / "gemkr_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"truncated/trainable\.safetensors: not a readable safetensors file"):
        GeMKRModel.from_pretrained(truncated)


def test_non_finite_weights_are_refused(llm_dir, tmp_path):
    model = GeMKRModel(tiny_config(llm_dir))
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_A" in n)[0, 0] = float("nan")
    ckpt = model.save_pretrained(tmp_path / "nan")
    with pytest.raises(ValueError, match=r"lora_A.* NaN or infinite"):
        GeMKRModel.from_pretrained(ckpt)


@pytest.mark.parametrize(
    ("edit", "match"),
    [(lambda m: m["config"].update(lora_target_modules="q_proj"), "lora_target_modules must be a list of strings"),
     (lambda m: m["config"].update(prefix_length="6"), "prefix_length must be an integer"),
     (lambda m: m["config"].update(detector_conf=None), "detector_conf must be a finite number"),
     (lambda m: m.pop("base_fingerprints"), "base_fingerprints"),
     (lambda m: m["base_fingerprints"].pop("clip"), "records no fingerprint of its base clip"),
     (lambda m: m.update(format_version=0), "checkpoint format 0"),
     (lambda m: m.update(format_version=True), "checkpoint format True"),
     (lambda m: m.pop("files"), "'files' .* missing")],
)
def test_an_ill_typed_or_stripped_config_is_refused_naming_the_key(edit, match, saved, tmp_path):
    ckpt = _copy(saved, tmp_path / "ckpt")
    meta = json.loads((ckpt / "gemkr_config.json").read_text())
    edit(meta)
    (ckpt / "gemkr_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        GeMKRModel.from_pretrained(ckpt)


def test_decoding_json_travels_inside_the_atomic_save_and_is_validated(llm_dir, saved, tmp_path):
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.llamaindex.clue_generator import checkpoint_decoding_config
    from gemkr_llamaindex.model.checkpoint import read_decoding

    model = GeMKRModel(tiny_config(llm_dir, clip_model=None, clip_pretrained=None))
    tuned = DecodingConfig(num_beams=6, num_groups=3, anchor="doc_start")
    ckpt = model.save_pretrained(tmp_path / "ckpt", decoding=tuned)
    assert checkpoint_decoding_config(ckpt) == read_decoding(ckpt) == tuned
    assert read_decoding(saved) == DecodingConfig()  # saved without settings: the defaults, written out
    for bad, match in ((4.0, "num_beams must be an integer, got 4.0"), (None, "num_beams must be an integer"),
                       ("abc", "num_beams: expected an integer, got 'abc'")):
        (ckpt / "decoding.json").write_text(json.dumps({"num_beams": bad}))
        with pytest.raises(ValueError, match=rf"ckpt/decoding\.json: .*{match}"):
            read_decoding(ckpt)
    (ckpt / "decoding.json").write_text('{"length_penalty": NaN}')
    with pytest.raises(ValueError, match=r"decoding\.json: length_penalty must be a finite number"):
        read_decoding(ckpt)
    (ckpt / "decoding.json").write_text('{"stop_when_unique": "maybe"}')
    with pytest.raises(ValueError, match="expected true or false"):
        read_decoding(ckpt)

    (ckpt / "decoding.json").unlink()
    with pytest.raises(FileNotFoundError, match="decoding.json is missing"):
        read_decoding(ckpt)
    meta = json.loads((ckpt / "gemkr_config.json").read_text())
    meta["format_version"] = 2  # written by a version that saved no decoding.json: defaults, with a warning
    (ckpt / "gemkr_config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="has no decoding.json"):
        assert read_decoding(ckpt) is None


def test_an_interrupted_save_leaves_the_old_checkpoint_whole(llm_dir, saved, tmp_path, monkeypatch):
    from gemkr_llamaindex.decoding import DecodingConfig
    from gemkr_llamaindex.model import checkpoint

    ckpt = _copy(saved, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "swap_in", crash)
    with pytest.raises(KeyboardInterrupt):
        GeMKRModel(tiny_config(llm_dir)).save_pretrained(ckpt, decoding=DecodingConfig(num_beams=8, num_groups=2))
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_the_shipped_checkpoint_loads_with_its_checksums():
    from gemkr_llamaindex.checkpoints import packaged_checkpoint
    from gemkr_llamaindex.model.checkpoint import FORMAT_VERSION, read_config, read_decoding

    ckpt = packaged_checkpoint()
    meta = read_config(ckpt)
    assert meta["format_version"] == FORMAT_VERSION and "trainable.safetensors" in meta["files"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its decoding.json is there and valid: no fallback to the defaults
        assert read_decoding(ckpt).to_dict() == json.loads((ckpt / "decoding.json").read_text())
