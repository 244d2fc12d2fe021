"""Instruction tuning of GeMKR (paper §Model Training, Implementation Details).

AdamW at lr 6e-5 with linear warm-up (then cosine decay), batches of 12 in the paper; gradient
accumulation; bf16 autocast on GPU; optional gradient checkpointing of the LLM (``gradient_checkpointing``,
less activation memory for a 7B model at the cost of a second forward). Several processes (GPUs, or CPU
processes with gloo) train one model data-parallel under ``accelerate launch``: every process walks the
same global batches and takes its own slice of each (``batch_size`` is the global batch), gradients are
averaged by DDP, and only the main process writes checkpoints. Only the trainable parts (prefixes, object projection, gates,
alignment, LoRA) are optimised and checkpointed. A checkpoint folder holds the model's
``save_pretrained`` output plus ``trainer_state.pt`` (optimizer state, step, the run config), so a run
resumes where it stopped with the same data order.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gemkr_llamaindex.config_fields import check_fields
from gemkr_llamaindex.images import load_image
from gemkr_llamaindex.model.gemkr import GeMKRConfig, GeMKRModel, VisualBatch
from gemkr_llamaindex.training.data import CLUE_KEYWORDS, CLUE_MODES, InstructionExample

STATE_FILE = "trainer_state.pt"
#: Settings a resumed run may change: where things are and how the machine runs them, not what is learned
#: (``max_steps`` may grow to continue a run). Any other difference is refused on resume.
RESUME_MAY_CHANGE = frozenset({"kb_dir", "output_dir", "train_file", "init_from", "max_steps", "save_every", "device",
                               "object_cache_dir", "resume", "cpu_bf16", "gradient_checkpointing", "allow_download",
                               "trust_detector_pickle"})


class ResumeConfigError(ValueError):
    """The run in ``output_dir`` was started with other settings than the ones given now."""


@dataclass
class TrainConfig:
    """Everything a run needs; ``gemkr train --config FILE.yaml`` reads it from YAML (same keys).

    Queries come from ``train_file`` (labelled JSONL) and/or ``corpus_queries`` (options of
    :func:`~gemkr_llamaindex.training.corpus_queries.corpus_training_queries`: pseudo-queries made from
    the KB alone). ``clue_mode`` picks the targets: ``"sampled"`` (the paper's clue sampler),
    ``"doc_start"`` (each document's opening, for ``anchor="doc_start"`` decoding) or ``"mixed"``.
    ``decoding`` (DecodingConfig fields) is saved with every checkpoint as its default decoding. Every
    value is checked when the config is made (types, ranges, the ``model`` and ``decoding`` settings),
    naming the key. ``allow_download`` lets base models come from a hub; ``trust_detector_pickle`` lets
    the model load a pickle-based detector (``.pt``), which can run code: only for a file you trust.
    """

    kb_dir: str
    output_dir: str
    train_file: str | None = None
    corpus_queries: dict[str, Any] | None = None
    clue_mode: str = "sampled"
    opening_share: float = 0.5  # clue_mode "mixed": the share of queries whose target is the document's opening
    clue_keywords: str = "question"  # "question+tags": the tags' words steer the clue sampler too
    decoding: dict[str, Any] | None = None
    model: dict[str, Any] = field(default_factory=dict)  # GeMKRConfig fields
    init_from: str | None = None  # a checkpoint whose trainable weights start the run (resuming takes precedence)
    lr: float = 6e-5
    vision_lr_scale: float = 1.0  # lr multiplier for the vision side + alignment (LoRA keeps ``lr``)
    warmup_steps: int = 100
    max_steps: int = 1000
    min_lr_ratio: float = 0.1
    batch_size: int = 12
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no clipping
    clues_per_doc: int = 2
    clue_length: int = 12
    rho: float = 1.0
    save_every: int = 200
    gradient_checkpointing: bool = False
    length_buckets: bool = True  # batch prompts of similar length together (less padding; same examples per epoch)
    cpu_bf16: bool | None = None  # bf16 autocast on a CPU: None = where the CPU has bf16 instructions
    seed: int = 0
    device: str = "auto"
    object_cache_dir: str | None = None  # default: <cache>/object_features
    resume: bool = True
    allow_download: bool = False
    trust_detector_pickle: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        for key, low, high, closed in (
            ("lr", 0, None, False), ("max_grad_norm", 0, None, False), ("rho", 0, None, False),
            ("max_steps", 1, None, True), ("batch_size", 1, None, True), ("grad_accum", 1, None, True),
            ("clues_per_doc", 1, None, True), ("clue_length", 1, None, True), ("warmup_steps", 0, None, True),
            ("save_every", 0, None, True), ("weight_decay", 0, None, True), ("vision_lr_scale", 0, None, True),
            ("min_lr_ratio", 0, 1, True), ("opening_share", 0, 1, True),
        ):
            value = getattr(self, key)
            if value is None:
                continue
            if (value < low if closed else value <= low) or (high is not None and value > high):
                want = f"{'>=' if closed else '>'} {low}" + (f" and <= {high}" if high is not None else "")
                raise ValueError(f"{key} must be {want}, got {value!r}")
        if self.clue_mode not in CLUE_MODES or self.clue_keywords not in CLUE_KEYWORDS:
            raise ValueError(f"clue_mode must be one of {CLUE_MODES} and clue_keywords one of {CLUE_KEYWORDS}, got "
                             f"{self.clue_mode!r} and {self.clue_keywords!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None
        for key, check in (("model", lambda v: GeMKRConfig.from_dict(v)), ("decoding", _decoding_config),
                           ("corpus_queries", _check_corpus_query_options)):
            try:
                check(getattr(self, key) or {})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{key}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; valid keys: {sorted(known)}")
        missing = [k for k in ("kb_dir", "output_dir") if k not in data]
        if missing:
            raise ValueError(f"training config lacks {missing}")
        if not data.get("train_file") and data.get("corpus_queries") is None:
            raise ValueError("training config needs train_file (labelled queries) or corpus_queries (pseudo-queries "
                             "made from the KB, e.g. corpus_queries: {})")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise TypeError(f"{path}: expected a mapping of training options")
        base = path.parent
        for key in ("train_file", "kb_dir", "output_dir", "init_from"):  # relative paths are relative to the YAML file
            if data.get(key) and not Path(data[key]).is_absolute():
                data[key] = str(base / data[key])
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def _decoding_config(options: dict[str, Any]) -> Any:
    from gemkr_llamaindex.decoding import DecodingConfig

    return DecodingConfig.from_options(options)


def _check_corpus_query_options(options: dict[str, Any]) -> None:
    import inspect

    from gemkr_llamaindex.training.corpus_queries import corpus_training_queries

    known = set(inspect.signature(corpus_training_queries).parameters) - {"kb", "seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {sorted(known)}")


def lr_at(step: int, base_lr: float, warmup_steps: int, max_steps: int, min_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * ((step + 1) / warmup_steps)
    span = max(max_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def batches(n_examples: int, batch_size: int, seed: int, start: int = 0,
            lengths: Sequence[int] | None = None, pool: int = 64) -> Iterator[list[int]]:
    """Endless shuffled batches of example indices; epoch e uses ``Random(seed + e)``.

    ``start`` skips that many batches, so a resumed run sees the data a fresh run would have seen. With
    ``lengths`` (tokens per example), each run of ``pool`` batches of the shuffled order is sorted by length
    before it is cut, and the batches are shuffled again: a batch pads to its longest row, so similar
    lengths waste less compute, while every epoch still holds every example once in a random order.
    """
    per_epoch = max(n_examples // batch_size, 1)
    epoch, offset = divmod(start, per_epoch)
    while True:
        rng = random.Random(seed + epoch)
        order = list(range(n_examples))
        rng.shuffle(order)
        if lengths is None:
            cut = [order[b * batch_size : (b + 1) * batch_size] or order[:batch_size] for b in range(per_epoch)]
        else:
            span = pool * batch_size
            flat: list[int] = []
            for i in range(0, per_epoch * batch_size, span):
                flat += sorted(order[i : min(i + span, per_epoch * batch_size)], key=lambda j: lengths[j])
            cut = [flat[b * batch_size : (b + 1) * batch_size] for b in range(per_epoch)]
            rng.shuffle(cut)
        yield from cut[offset:]
        epoch, offset = epoch + 1, 0


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def training_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's complete ``checkpoint-<step>`` folders (those with a trainer state), oldest first."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        if (p / STATE_FILE).is_file() and p.name.split("-")[-1].isdigit():
            found.append((int(p.name.split("-")[-1]), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = training_checkpoints(output_dir)
    return found[-1] if found else None


class Trainer:
    """Runs the optimisation loop over ``InstructionExample``s. See the module docstring."""

    def __init__(self, model: GeMKRModel, examples: Sequence[InstructionExample], config: TrainConfig) -> None:
        if not examples:
            raise ValueError("no training examples")
        self.model, self.examples, self.config = model, list(examples), config
        self.output_dir = Path(config.output_dir)
        self.params = [p for p in model.parameters() if p.requires_grad]
        llm_params = [p for p in model.llm.parameters() if p.requires_grad]
        llm_ids = {id(p) for p in llm_params}
        groups = [{"params": llm_params, "lr_scale": 1.0},
                  {"params": [p for p in self.params if id(p) not in llm_ids], "lr_scale": config.vision_lr_scale}]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        if config.gradient_checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.accelerator = _accelerator()
        self.forward_model: torch.nn.Module = model
        if self.accelerator is not None:  # DDP across processes; the optimizer steps on synced gradients
            self.forward_model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        self.step = 0
        self.cache_dir = config.object_cache_dir
        if self.cache_dir is None:
            from gemkr_llamaindex import assets

            self.cache_dir = str(assets.cache_dir() / "object_features")
        self.losses: list[float] = []
        self.decoding = _decoding_config(config.decoding or {})  # saved with every checkpoint

    # -- checkpoints ----------------------------------------------------------------------------------------
    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint-<step>`` (the main process only, under several processes)."""
        if not self.is_main_process:
            return None
        ckpt = self.output_dir / f"checkpoint-{self.step}"
        self.model.save_pretrained(ckpt, decoding=self.decoding)
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                 "train_config": dataclasses.asdict(self.config), "losses": self.losses}
        tmp = ckpt / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(ckpt / STATE_FILE)
        return ckpt

    def load_checkpoint(self, ckpt: str | Path, allow_config_change: bool = False) -> None:
        """Continue from ``ckpt``: weights, optimizer state, step and losses.

        Raises:
            ResumeConfigError: the run was started with other settings (not in :data:`RESUME_MAY_CHANGE`),
                unless ``allow_config_change``.
            ValueError: the checkpoint is damaged (the message names it).
        """
        ckpt = Path(ckpt)
        try:
            # weights_only: a checkpoint folder from elsewhere must not be able to run code when resumed
            state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
            saved = state["train_config"]
        except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{ckpt / STATE_FILE}: not a readable trainer state ({type(exc).__name__}: {exc})") from None
        now = dataclasses.asdict(self.config)
        changed = sorted(k for k in set(saved) & set(now) - RESUME_MAY_CHANGE if saved[k] != now[k])
        if changed and not allow_config_change:
            diff = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
            raise ResumeConfigError(
                f"{ckpt} belongs to a run with other settings ({diff}); continuing would mix two runs. Use another "
                "output_dir, start over (gemkr train --no-resume), or continue anyway (--allow-config-change)"
            )
        meta = GeMKRModel.read_checkpoint_config(ckpt)
        self.model.load_trainable(ckpt / "trainable.safetensors", meta.get("base_fingerprints"))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{ckpt / STATE_FILE}: the optimizer state does not fit this model ({exc})") from None
        self.losses = list(state.get("losses", []))

    # -- loop ----------------------------------------------------------------------------------------------
    def _visual(self, chunk: list[InstructionExample]) -> VisualBatch | None:
        if not self.model.has_vision:
            return None
        images = [None if e.record.image is None else load_image(e.record.image) for e in chunk]
        return self.model.visual_inputs(images, cache_dir=self.cache_dir)

    def train(self, max_steps: int | None = None, progress: bool = True) -> list[float]:
        """Train until ``max_steps`` optimizer steps (default: the config's); returns per-step losses."""
        from tqdm.auto import tqdm

        cfg = self.config
        max_steps = max_steps if max_steps is not None else cfg.max_steps
        device = self.model.device
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)
        lengths = self._lengths() if cfg.length_buckets else None
        order = batches(len(self.examples), cfg.batch_size, cfg.seed, start=self.step * cfg.grad_accum,
                        lengths=lengths)
        self.model.train()
        bar = tqdm(total=max_steps, initial=self.step, disable=not progress, desc="train", dynamic_ncols=True)
        while self.step < max_steps:
            t0 = time.perf_counter()
            lr = lr_at(self.step, cfg.lr, cfg.warmup_steps, max_steps, cfg.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            total, n_seen = 0.0, 0
            for _ in range(cfg.grad_accum):
                chunk = [self.examples[i] for i in self._my_share(next(order))]
                with autocast:
                    out = self.forward_model(
                        [e.record.question for e in chunk], [list(e.clue_ids) for e in chunk],
                        visual=self._visual(chunk), tags=[e.record.tags for e in chunk],
                    )
                # Accumulated gradients must average over micro-batches, not sum: divide each loss.
                loss = out.loss / cfg.grad_accum
                if self.accelerator is not None:
                    self.accelerator.backward(loss)
                    loss = self.accelerator.reduce(loss.detach(), reduction="mean")  # the global batch's loss
                else:
                    loss.backward()
                total += float(loss.detach())
                n_seen += len(chunk)
            if cfg.max_grad_norm is not None:
                if self.accelerator is not None:
                    self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                else:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.losses.append(total)
            dt = time.perf_counter() - t0
            bar.set_postfix(loss=f"{total:.4f}", ex_per_s=f"{n_seen / dt:.2f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
            bar.update(1)
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save_checkpoint()
        bar.close()
        self.model.eval()
        return self.losses

    @property
    def bf16(self) -> bool:
        """bf16 autocast: always on a GPU; on a CPU as ``cpu_bf16`` says (None: where the CPU has bf16
        instructions, which make a step about a fifth faster here; LoRA's weights stay float32)."""
        if self.model.device.type == "cuda":
            return True
        if self.model.device.type != "cpu":
            return False
        return cpu_has_bf16() if self.config.cpu_bf16 is None else bool(self.config.cpu_bf16)

    def _lengths(self) -> list[int]:
        """Prompt + clue tokens per example (the visual slot included), from the tokenizer alone."""
        recs = [e.record for e in self.examples]
        prompts = self.model.prompt_lengths([r.question for r in recs], [r.tags for r in recs])
        return [p + len(e.clue_ids) for p, e in zip(prompts, self.examples)]

    def _my_share(self, batch: list[int]) -> list[int]:
        """This process's slice of a global batch (all of it in a single process)."""
        if self.accelerator is None:
            return batch
        n, rank = self.accelerator.num_processes, self.accelerator.process_index
        if len(batch) < n:
            raise ValueError(f"batch_size {len(batch)} is smaller than the {n} training processes")
        return batch[rank::n]


def _accelerator():
    """An ``accelerate.Accelerator`` when this process is one of several (``accelerate launch``), else None."""
    from accelerate import PartialState

    if PartialState().num_processes <= 1:
        return None
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # find_unused_parameters: a batch without text-only rows leaves the "no image" embedding unused
    return Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def training_queries(config: TrainConfig, kb: Any) -> list:
    """The run's queries: the labelled file's, then the corpus-made ones."""
    from gemkr_llamaindex.training.corpus_queries import corpus_training_queries
    from gemkr_llamaindex.training.data import read_training_jsonl

    records = list(read_training_jsonl(config.train_file)) if config.train_file else []
    if config.corpus_queries is not None:
        records += corpus_training_queries(kb, seed=config.seed, **config.corpus_queries)
    return records


def train(config: TrainConfig, verbose: bool = True, allow_config_change: bool = False) -> Path:
    """Python API of ``gemkr train``: make the examples from the KB, train, save ``output_dir/final``.
    ``allow_config_change``: resume a run even if its settings changed (see :meth:`Trainer.load_checkpoint`)."""
    from gemkr_llamaindex.kb import KnowledgeBase
    from gemkr_llamaindex.training.clues import ClueSampler
    from gemkr_llamaindex.training.data import build_examples

    torch.manual_seed(config.seed)
    kb = KnowledgeBase.open(config.kb_dir)
    device = resolve_device(config.device)
    model = GeMKRModel(GeMKRConfig.from_dict(config.model), device=device,
                       trust_detector_pickle=config.trust_detector_pickle, allow_download=config.allow_download)
    kb.check_tokenizer(model.tokenizer)  # clues are KB token ids: the one tokenizer check
    records = training_queries(config, kb)
    sampler = ClueSampler(kb, m=config.clues_per_doc, length=config.clue_length, rho=config.rho, seed=config.seed)
    examples = build_examples(records, sampler, config.clue_mode, model.tokenizer.eos_token_id, config.opening_share,
                              config.clue_keywords)
    if verbose:
        print(f"{len(records)} queries -> {len(examples)} (query, clue) examples ({config.clue_mode} clues); "
              f"{sampler.stats.unique_share:.1%} of sampled clues map to a single document; "
              f"{len(sampler.stats.docs_missing)} positive ids not in the KB")
        print(model.parameter_summary())
    trainer = Trainer(model, examples, config)
    found = training_checkpoints(config.output_dir) if config.resume else []
    ckpt = found[-1] if found else None
    if ckpt is not None:
        try:
            trainer.load_checkpoint(ckpt, allow_config_change)
        except ResumeConfigError:
            raise
        except (OSError, ValueError) as exc:
            instead = f"resume from {found[-2].name}" if len(found) > 1 else "start over"
            raise ValueError(f"cannot resume from {ckpt}, the run's latest checkpoint: {exc}. Move it aside (or "
                             f"delete it) to {instead}") from None
        if verbose:
            print(f"resumed from {ckpt} at step {trainer.step}")
    elif config.init_from:  # continue training another run's result (new data, a new schedule)
        start = Path(config.init_from)
        meta = GeMKRModel.read_checkpoint_config(start)
        model.load_trainable(start / "trainable.safetensors", meta.get("base_fingerprints"))
        if verbose:
            print(f"trainable weights initialised from {start}")
    t0 = time.perf_counter()
    trainer.train(progress=verbose and trainer.is_main_process)
    final = Path(config.output_dir) / "final"
    if trainer.is_main_process:
        model.save_pretrained(final, decoding=trainer.decoding)
        write_loss_curve(trainer.losses, Path(config.output_dir), time.perf_counter() - t0)
    if trainer.accelerator is not None:
        trainer.accelerator.wait_for_everyone()
    return final


def write_loss_curve(losses: list[float], out_dir: Path, seconds: float) -> None:
    """``losses.json`` and ``loss_curve.png`` (per-step loss and its moving average) in ``out_dir``."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "losses.json").write_text(json.dumps({"losses": losses, "seconds": round(seconds, 1)}))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    window = max(1, len(losses) // 50)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, alpha=0.3, label="step loss")
    ax.plot(smooth, label=f"moving average ({window} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("clue NLL per token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss_curve.png", dpi=120)
    plt.close(fig)
