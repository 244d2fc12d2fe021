"""GeMKR: object-aware CLIP tower -> alignment (Eq. 7) -> template -> LoRA LLM, trained with Eq. 8.

``GeMKRModel`` owns the trainable parts (prefixes, object projection, gates, alignment with its
"no image" embedding, LoRA) and wraps the frozen base models named in ``GeMKRConfig``. It composes one
module per mechanism: ``visual`` (pictures -> pixels + object features), ``vision`` (the tower),
``alignment``, ``prompt`` (template + splicing), ``scoring`` (clue log-likelihood, Eq. 1) and
``checkpoint`` (persistence). With ``clip_model=None`` there is no vision tower: the prompt is question +
visual tags, and only LoRA trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gemkr_llamaindex.model import checkpoint
from gemkr_llamaindex.model.config import GeMKRConfig
from gemkr_llamaindex.model.prompt import PromptBuilder, PromptEmbeds
from gemkr_llamaindex.model.scoring import clue_log_likelihood, target_log_probs
from gemkr_llamaindex.model.template import InstructionTemplate
from gemkr_llamaindex.model.visual import VisualBatch, VisualInputs

if TYPE_CHECKING:  # pragma: no cover
    from gemkr_llamaindex.decoding.config import DecodingConfig

__all__ = ["GeMKRConfig", "GeMKRModel", "GeMKROutput", "PromptEmbeds", "VisualBatch"]

CONFIG_FILE, WEIGHTS_FILE = checkpoint.CONFIG_FILE, checkpoint.WEIGHTS_FILE


@dataclass
class GeMKROutput:
    loss: torch.Tensor  # mean negative log-likelihood per response token (Eq. 8 / token count)
    num_tokens: int


class GeMKRModel(nn.Module):
    """The GeMKR retriever's neural part. See the module docstring."""

    def __init__(self, config: GeMKRConfig, device: str | torch.device = "cpu", verbose: bool = False,
                 base_llm: tuple[nn.Module, Any] | None = None, *, trust_detector_pickle: bool = False,
                 allow_download: bool = False) -> None:
        """``base_llm``: an already built ``(causal LM, tokenizer)`` to wrap instead of loading ``config.llm``
        (for benchmarks of untrained architectures, e.g. a random LLaMA-7B-shaped model on a GPU).
        ``trust_detector_pickle``: the caller trusts a pickle-based detector file (``.pt``), which can run code
        when loaded; ``allow_download``: base models may come from a hub (never otherwise)."""
        super().__init__()
        from gemkr_llamaindex.model.llm import add_lora, load_llm

        self.config = config
        if config.detector is not None:
            from gemkr_llamaindex.model.detector import check_detector_spec

            check_detector_spec(config.detector, trust_detector_pickle)  # before minutes of loading
        if base_llm is not None:
            llm, self.tokenizer = base_llm
            llm.eval().requires_grad_(False)
        else:
            llm, self.tokenizer = load_llm(config.llm, device=device, allow_download=allow_download)
        self.tower = self.alignment = self.preprocess = None
        self.visual_io: VisualInputs | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the trainable parts start identically for the same config
            if config.has_vision:
                from gemkr_llamaindex.model.alignment import VisualAlignment
                from gemkr_llamaindex.model.vision import ObjectAwareVisionTower, load_clip

                visual, self.preprocess, image_size = load_clip(
                    config.clip_model, config.clip_pretrained, config.clip_model_cfg, config.clip_seed,
                    allow_download=allow_download)
                self.tower = ObjectAwareVisionTower(visual, config.prefix_length, config.max_objects)
            self.llm = add_lora(llm, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
            if config.has_vision:
                self.alignment = VisualAlignment(self.tower.width, llm.config.hidden_size)
        if config.has_vision:
            self.tower.to(device)
            self.alignment.to(device)
            self.visual_io = VisualInputs(config, self.tower, self.preprocess, image_size,
                                          checkpoint.fingerprint(self.tower.visual), trust_detector_pickle)
        self.template = InstructionTemplate(task=config.task_description)
        self.prompts = PromptBuilder(self.template, self.tokenizer, image_slot=config.has_vision)
        if verbose:
            print(self.parameter_summary())

    # ---- bookkeeping -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def has_vision(self) -> bool:
        return self.tower is not None

    @property
    def num_visual_tokens(self) -> int:
        """Positions the visual slot takes in a prompt ([CLS] + objects), 0 without a tower."""
        return 1 + self.config.max_objects if self.has_vision else 0

    @property
    def context_length(self) -> int:
        """The LLM's positions (``max_position_embeddings``)."""
        return int(getattr(self.llm.config, "max_position_embeddings", 0) or 0)

    def train(self, mode: bool = True) -> GeMKRModel:
        super().train(mode)
        if self.tower is not None:
            self.tower.visual.eval()  # frozen CLIP: no patch dropout, ever
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def num_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def parameter_summary(self) -> str:
        trainable, total = self.num_parameters()
        return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"

    def base_fingerprints(self) -> dict[str, str]:
        fps = {"llm": checkpoint.fingerprint(self.llm)}
        if self.tower is not None:
            fps["clip"] = checkpoint.fingerprint(self.tower.visual)
        return fps

    # ---- visual inputs -----------------------------------------------------------------------------------
    def visual_inputs(self, images: Sequence[Any], cache_dir: str | Path | None = None) -> VisualBatch | None:
        """Pixels and object features of images (any ``load_image`` input; None = no picture), or None for a
        model without a vision tower (which reads the visual tags only)."""
        return None if self.visual_io is None else self.visual_io.batch(images, cache_dir)

    def encode_visual(self, visual: VisualBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned visual tokens ``H'_v`` (B, 1 + r, H) in the LLM embedding dtype, and their mask."""
        visual = visual.to(self.device)
        out = self.tower(visual.pixel_values.float(), visual.object_features.float(), visual.object_mask)
        tokens, mask = self.alignment(out.h_cls, out.h_r, out.object_mask, visual.has_image)  # Eq. 7
        return tokens.to(self.llm.get_input_embeddings().weight.dtype), mask

    # ---- prompt ------------------------------------------------------------------------------------------
    def prompt_lengths(self, questions: Sequence[str], tags: Sequence[str | None] | None = None) -> list[int]:
        """Prompt positions per query (visual slot included), from the tokenizer alone: no forward pass."""
        tags = list(tags) if tags is not None else [None] * len(questions)
        return self.prompts.lengths(questions, tags, self.num_visual_tokens)

    def prompt_embeds(
        self,
        questions: Sequence[str],
        images: Sequence[Any] | None = None,
        visual: VisualBatch | None = None,
        tags: Sequence[str | None] | None = None,
    ) -> PromptEmbeds:
        """The template with the visual tokens spliced in, left-padded to a common length.

        With a vision tower give ``images`` (None entries = no picture) or a prepared ``visual`` batch;
        without one, pictures are not read (give none).
        """
        tags = list(tags) if tags is not None else [None] * len(questions)
        return self.embed_pieces(self.prompts.pieces(questions, tags), images=images, visual=visual)

    def embed_pieces(self, pieces: Sequence[tuple[Sequence[int], Sequence[int]]], images: Sequence[Any] | None = None,
                     visual: VisualBatch | None = None) -> PromptEmbeds:
        """:meth:`prompt_embeds` from already tokenised template pieces (``self.prompts.piece``), so a caller
        that measured a prompt's length builds it without tokenising it again."""
        vis_tokens = vis_mask = None
        if self.has_vision:
            if images is not None and visual is not None:
                raise ValueError("give `images` or a prepared `visual` batch, not both")
            if visual is None:
                visual = self.visual_inputs(images if images is not None else [None] * len(pieces))
            if len(visual) != len(pieces):
                raise ValueError(f"{len(pieces)} questions but {len(visual)} images")
            vis_tokens, vis_mask = self.encode_visual(visual)
        elif visual is not None:
            raise ValueError("this GeMKR model has no vision tower (clip_model=None): it reads visual tags, not pixels")
        return self.prompts.assemble(self.llm.get_input_embeddings(), pieces, vis_tokens, vis_mask)

    # ---- loss and scoring --------------------------------------------------------------------------------
    @property
    def _pad(self) -> int:
        return self.tokenizer.pad_token_id

    def forward(
        self,
        questions: Sequence[str],
        clue_ids: Sequence[Sequence[int]],
        images: Sequence[Any] | None = None,
        visual: VisualBatch | None = None,
        tags: Sequence[str | None] | None = None,
    ) -> GeMKROutput:
        """Eq. 8: negative log-likelihood of the clue tokens after "### Response:" (prompt tokens carry no
        loss), averaged over the batch's clue tokens so the scale does not depend on clue length."""
        if self.training:
            self._require_unmerged("train")
        prompt = self.prompt_embeds(questions, images=images, visual=visual, tags=tags)
        logp, tmask = target_log_probs(self.llm, prompt, clue_ids, self._pad)
        n = int(tmask.sum())
        return GeMKROutput(loss=-logp.sum() / n, num_tokens=n)

    def clue_log_likelihood(self, prompt: PromptEmbeds, clue_ids: Sequence[Sequence[int]],
                            batch_size: int = 32) -> torch.Tensor:
        """``sum_j log F(c_j | c_<j, Q)`` (log of Eq. 1) for each clue, as a float32 CPU tensor.

        ``prompt`` holds either one prompt (scored against every clue) or one prompt per clue.
        """
        return clue_log_likelihood(self.llm, prompt, clue_ids, self._pad, batch_size)

    # ---- inference ---------------------------------------------------------------------------------------
    @property
    def lora_merged(self) -> bool:
        """Whether LoRA is folded into the LLM's weights (:meth:`merge_lora`)."""
        return any(m.merged for m in self.llm.modules() if hasattr(m, "merged_adapters"))  # peft's LoRA layers

    def merge_lora(self) -> GeMKRModel:
        """Fold LoRA into the frozen weights for inference: the same outputs (up to float rounding) without
        the adapters' extra small matmuls per projection, about a quarter less decoding time on a CPU. The
        adapters stay and :meth:`unmerge_lora` restores the base weights; a merged model is not saved or
        trained (its base weights are not the ones its checkpoint names)."""
        if not self.lora_merged:
            self.llm.merge_adapter()
        return self

    def unmerge_lora(self) -> GeMKRModel:
        if self.lora_merged:
            self.llm.unmerge_adapter()
        return self

    def _require_unmerged(self, what: str) -> None:
        if self.lora_merged:
            raise RuntimeError(f"cannot {what} a model whose LoRA is merged for inference; call unmerge_lora() first")

    # ---- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, decoding: DecodingConfig | None = None) -> Path:
        """Write the trainable weights (safetensors), ``decoding`` (a ``DecodingConfig``; default the library's
        defaults) and a config naming the base models, atomically. A YOLO detector given by a file travels
        inside the checkpoint as ``detector.safetensors``: a checkpoint never carries a pickle."""
        self._require_unmerged("save")
        config, files = self.config.to_dict(), {}
        if self._detector_travels():
            config["detector"] = checkpoint.DETECTOR_FILE
            files[checkpoint.DETECTOR_FILE] = self.visual_io.extractor().detector.safetensors_bytes()
        meta = {"config": config, "base_fingerprints": self.base_fingerprints(),
                "trainable_parameters": self.num_parameters()[0]}
        return checkpoint.save(self.trainable_state_dict(), meta, directory, decoding, files)

    def _detector_travels(self) -> bool:
        """Whether the detector is YOLO weights from a file (saved with the checkpoint), rather than an
        architecture that ships with ultralytics by name or a transformers folder."""
        from gemkr_llamaindex.model.detector import detector_kind

        spec = self.config.detector
        return spec is not None and detector_kind(spec) == "yolo" and Path(spec).expanduser().exists()

    @staticmethod
    def read_checkpoint_config(directory: str | Path) -> dict[str, Any]:
        return checkpoint.read_config(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu", *,
                        trust_detector_pickle: bool = False, allow_download: bool = False,
                        **overrides: Any) -> GeMKRModel:
        """Rebuild from ``save_pretrained`` output. ``overrides`` may relocate base models (e.g. ``llm=`` a
        local copy, ``detector=``); the base weights are checked against the fingerprints recorded at save
        time. A checkpoint's own detector is data only (see :mod:`gemkr_llamaindex.model.checkpoint`);
        ``trust_detector_pickle`` applies to a ``detector=`` you pass, never to the checkpoint's."""
        directory = Path(directory)
        if trust_detector_pickle and "detector" not in overrides:
            raise ValueError("trust_detector_pickle=True applies to a detector you pass (detector=PATH), never to "
                             "the one a checkpoint names")
        meta = checkpoint.read_config(directory)
        config = checkpoint.resolve_detector(meta["config"], directory, explicit="detector" in overrides)
        try:
            config = GeMKRConfig.from_dict({**config, **overrides})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{directory / CONFIG_FILE}: {exc}") from None
        model = cls(config, device=device, trust_detector_pickle=trust_detector_pickle, allow_download=allow_download)
        model.load_trainable(directory / WEIGHTS_FILE, expected_fingerprints=meta["base_fingerprints"])
        return model

    def load_trainable(self, path: str | Path, expected_fingerprints: dict[str, str] | None = None) -> None:
        """Load trainable weights saved by ``save_pretrained``, checking base models and keys."""
        self._require_unmerged("load weights into")
        describe = f"config: llm={self.config.llm!r}, clip={self.config.clip_model!r}/{self.config.clip_pretrained!r}"
        checkpoint.load_trainable(self, path, expected_fingerprints, self.base_fingerprints(), describe)
