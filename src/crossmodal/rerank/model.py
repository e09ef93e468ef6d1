"""The reranker: a small cross-encoder (ALBEF/BLIP "ITM" style) that re-scores the dual encoder's top N.

Caption token states of lite's text tower attend to the grid cells of lite's image tower; one logit per
(caption, photo) pair says how well they match. The model is split in two so the photo side runs once
per stored photo: ``photo_tokens`` (projection + position embedding, stored as float16) and ``score``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

IMAGE_FEATURES = 1280
TEXT_FEATURES = 384
# The shipped reranker's settings (docs/model-card-lite.md): a 5x5 grid at d 128 scored 0.4 dev RSUM more, for 3.4x
# the bytes stored per photo and 2-3x the scoring time.
DEFAULT_CONFIG: dict[str, Any] = {"d": 96, "layers": 1, "heads": 4, "ffn": 2, "cells": 3, "pooled": True,
                                  "dropout": 0.1, "grid": 7}


class Attention(nn.Module):
    """Multi-head attention written out (no fused kernels) so ONNX export and grouped batches are plain."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(d // heads)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, heads, S, d / heads) of ``memory`` (B, S, d)."""
        b, n, d = memory.shape
        k, v = self.kv(memory).reshape(b, n, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Attend from ``x`` (B, L, d) to projected keys/values; ``bias`` (B, 1, 1, S) is 0 or a large negative."""
        b, n, d = x.shape
        q = self.q(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if bias is not None:
            att = att + bias
        att = self.drop(att.softmax(-1))
        return self.out(torch.matmul(att, v).transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``x`` (B, L, d) to ``memory`` (B, S, d)."""
        return self.attend(x, *self.project_kv(memory), bias)


class Block(nn.Module):
    """Pre-LN [text self-attention, text->photo cross-attention, feed-forward]."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(d)
        self.self_attn = Attention(d, heads, dropout)
        self.ln_cross = nn.LayerNorm(d)
        self.ln_photo = nn.LayerNorm(d)
        self.cross_attn = Attention(d, heads, dropout)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn * d, d))
        self.drop = nn.Dropout(dropout)

    def self_part(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The text self-attention sublayer (independent of the photo)."""
        y = self.ln_self(x)
        return x + self.drop(self.self_attn(y, y, bias))

    def photo_kv(self, photo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of photo tokens (P, T, d)."""
        return self.cross_attn.project_kv(self.ln_photo(photo))

    def photo_part(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The cross-attention (to photo keys/values) and feed-forward sublayers."""
        x = x + self.drop(self.cross_attn.attend(self.ln_cross(x), k, v))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


def pooling_matrix(grid: int, cells: int, pooled: bool) -> torch.Tensor:
    """(T, grid * grid) averaging weights: the global mean (when ``pooled``), then adaptive average pooling of
    the grid to ``cells`` x ``cells`` (a plain MatMul, so any cell count exports to ONNX)."""
    eye = torch.eye(grid * grid).reshape(grid * grid, 1, grid, grid)
    rows = F.adaptive_avg_pool2d(eye, cells).reshape(grid * grid, cells * cells).T
    if pooled:
        rows = torch.cat([torch.full((1, grid * grid), 1.0 / (grid * grid)), rows])
    return rows.contiguous()


class RerankerModel(nn.Module):
    """Cross-encoder over lite's image grid (1280 x 7 x 7) and caption token states (L x 384) -> one logit."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        c = self.config
        d = c["d"]
        self.tokens = c["cells"] ** 2 + (1 if c["pooled"] else 0)
        self.register_buffer("pool", pooling_matrix(c["grid"], c["cells"], c["pooled"]), persistent=False)
        self.photo_in = nn.Linear(IMAGE_FEATURES, d)
        self.photo_pos = nn.Parameter(torch.zeros(self.tokens, d))
        self.text_in = nn.Linear(TEXT_FEATURES, d)
        self.blocks = nn.ModuleList([Block(d, c["heads"], c["ffn"], c["dropout"]) for _ in range(c["layers"])])
        self.ln_out = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        nn.init.normal_(self.photo_pos, std=0.02)

    def photo_tokens(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, 1280, 7, 7) or (N, 49, 1280) grid -> (N, T, d) photo tokens, computed once per stored photo."""
        if grid.dim() == 3:
            side = self.config["grid"]
            grid = grid.transpose(1, 2).reshape(grid.shape[0], IMAGE_FEATURES, side, side)
        cells = torch.matmul(self.pool, grid.flatten(2).transpose(1, 2))  # (N, T, 1280)
        return self.photo_in(cells) + self.photo_pos

    def _text_start(self, text_states: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project the token states and run the first (photo-independent) self-attention sublayer."""
        bias = (1.0 - text_mask.to(text_states.dtype))[:, None, None, :] * -1e4
        x = self.text_in(text_states)
        return self.blocks[0].self_part(x, bias), bias

    def _finish(self, x: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the final text states -> one logit each."""
        m = text_mask.to(x.dtype).unsqueeze(-1)
        pooled = (self.ln_out(x) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)

    def score(self, text_states: torch.Tensor, text_mask: torch.Tensor, photo_tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B,) of aligned pairs: caption states (B, L, 384) with mask (B, L) and photo tokens (B, T, d)."""
        x, bias = self._text_start(text_states, text_mask)
        photo = photo_tokens.to(x.dtype)
        for i, block in enumerate(self.blocks):
            if i:
                x = block.self_part(x, bias)
            x = block.photo_part(x, *block.photo_kv(photo))
        return self._finish(x, text_mask)

    def score_matrix(self, text_states: torch.Tensor, text_mask: torch.Tensor, photo_tokens: torch.Tensor
                     ) -> torch.Tensor:
        """Logits (B, P) of every caption (B, L, 384) against every photo (P, T, d); the text-only start and
        the photo keys/values run once each (training batches score whole groups this way)."""
        b, p = text_states.shape[0], photo_tokens.shape[0]
        x, bias = self._text_start(text_states, text_mask)
        x, bias = x.repeat_interleave(p, 0), bias.repeat_interleave(p, 0)
        photo = photo_tokens.to(x.dtype)
        for i, block in enumerate(self.blocks):
            if i:
                x = block.self_part(x, bias)
            k, v = block.photo_kv(photo)
            x = block.photo_part(x, k.repeat(b, 1, 1, 1), v.repeat(b, 1, 1, 1))
        return self._finish(x, text_mask.repeat_interleave(p, 0)).reshape(b, p)

    def forward(self, text_states: torch.Tensor, text_mask: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Logits (B,) of aligned (caption, photo grid) pairs: ``photo_tokens`` then ``score``."""
        return self.score(text_states, text_mask, self.photo_tokens(grid))

    def save(self, path: Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the weights as safetensors with the config (and any extra metadata) as JSON in the header."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"config": json.dumps(self.config), **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RerankerModel:
        """Read a model written by ``save`` (config from the safetensors metadata)."""
        path = Path(path)
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n)).get("__metadata__", {})
        model = cls(json.loads(meta["config"]))
        model.load_state_dict(load_file(str(path)))
        return model.eval()
