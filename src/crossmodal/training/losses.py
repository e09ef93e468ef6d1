"""Contrastive losses for a batch of photo and caption embeddings.

Every loss takes ``positive`` (captions x photos, bool): caption ``t`` describes photo ``i``. Several
captions of one photo are all positives of that photo and never each other's negatives, and a photo
with no caption in the batch only serves as a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("infonce", "siglip", "vsepp")


def infonce(text: torch.Tensor, image: torch.Tensor, positive: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) with a learnable temperature; a row with k positives targets each at 1/k."""
    logits = logit_scale.exp() * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    pos = positive.float()
    t2i = -(pos * F.log_softmax(logits, dim=1)).sum(1) / pos.sum(1)
    has = pos.sum(0) > 0
    i2t = -(pos * F.log_softmax(logits, dim=0)).sum(0)[has] / pos.sum(0)[has]
    return (t2i.mean() + i2t.mean()) / 2


def siglip(text: torch.Tensor, image: torch.Tensor, positive: torch.Tensor, logit_scale: torch.Tensor,
           logit_bias: torch.Tensor) -> torch.Tensor:
    """Sigmoid loss (SigLIP): each caption-photo pair is a binary positive/negative, summed per caption."""
    logits = logit_scale.exp() * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T + logit_bias
    sign = positive.float() * 2 - 1
    return -F.logsigmoid(sign * logits).sum() / len(text)


def vsepp(text: torch.Tensor, image: torch.Tensor, positive: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """VSE++ max-violation hinge: each positive pair against the hardest in-batch negative, both ways."""
    sim = F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    neg_inf = torch.finfo(sim.dtype).min
    hardest_image = sim.masked_fill(positive, neg_inf).max(1, keepdim=True).values
    hardest_text = sim.masked_fill(positive, neg_inf).max(0, keepdim=True).values
    cost = F.relu(margin - sim + hardest_image) + F.relu(margin - sim + hardest_text)
    return (cost * positive).sum() / positive.sum()
