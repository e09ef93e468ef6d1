"""Probe: distil the ranking pipeline's normalised scores into lite's heads (dev only; nothing shipped).

    python benchmarks/distill_heads.py [--epochs 3] [--weight 1.0] [--temperature 0.05] [--lr 3e-4]

The towers stay as they are (features cached by `crossmodal train --reranker`, under --cache); only
the two linear heads train, from lite's own, on Flickr8k `train`: InfoNCE on the true pairs plus
KL divergence to the teacher's softmax over all train photos (for each caption) and all train captions
(for each photo of the batch), the teacher being lite's normalised scores (search/normalise.py with
the shipped bank). Prints dev RSUM of the student alone and normalised with the shipped (v4) bank
after each epoch, beside lite's own. It answers one question for a later lite v5: how much of what
normalisation gives can the dual encoder learn itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from crossmodal.encoders.lite import WEIGHTS, LiteEncoder, LiteHeads
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.search.normalise import find_bank
from crossmodal.search.pipeline import Ranking, SetScores
from crossmodal.sources.datasets import load_dataset
from crossmodal.training.train_reranker import cached_features

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flickr8k"


def pooled(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """The towers' pooled features (what the heads read): mean of the photo grid, masked mean of token states."""
    images = feats.pooled_photos()
    texts = np.stack([np.asarray(feats.tokens[a:b], dtype=np.float32).mean(0)
                      for a, b in zip(feats.offsets[:-1], feats.offsets[1:], strict=True)])
    return torch.from_numpy(images), F.normalize(torch.from_numpy(texts), dim=-1)


def embed(heads: LiteHeads, images: torch.Tensor, texts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        return F.normalize(heads.image(images), dim=-1).numpy(), F.normalize(heads.text(texts), dim=-1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--cache", default="runs/cache/reranker")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the distillation terms")
    parser.add_argument("--temperature", type=float, default=0.05, help="teacher softmax temperature")
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = LiteEncoder(WEIGHTS)
    bank = find_bank(encoder.fingerprint)
    train, dev = (cached_features(encoder, load_dataset(args.dataset, s), Path(args.cache)) for s in ("train", "dev"))
    (x_img, x_txt), (d_img, d_txt) = pooled(train), pooled(dev)
    owner = torch.from_numpy(train.text_image)
    t_img, t_txt = torch.from_numpy(train.image_vec), torch.from_numpy(train.text_vec)
    bias_img = torch.from_numpy(bank.biases("image", train.image_vec))
    bias_txt = torch.from_numpy(bank.biases("text", train.text_vec))

    def dev_rsum(heads: LiteHeads) -> tuple[float, float]:
        images, texts = embed(heads, d_img, d_txt)
        plain = evaluate_embeddings(images, texts, dev.text_image).metrics()["rsum"]
        normed = SetScores(images, texts, Ranking(rerank=0), bank)
        return plain, evaluate_embeddings(images, texts, dev.text_image, normed).metrics()["rsum"]

    print(f"lite v4: dev RSUM {dev_rsum(LiteHeads.from_state(load_file(str(WEIGHTS))))}", flush=True)
    student = LiteHeads.from_state(load_file(str(WEIGHTS))).train()
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.1)
    scale, started = 1 / 0.05, time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_txt))
        for start in range(0, len(x_txt), 512):
            rows = order[start:start + 512]
            images = F.normalize(student.image(x_img), dim=-1)
            texts = F.normalize(student.text(x_txt), dim=-1)
            t2i = texts[rows] @ images.T
            teacher = t_txt[rows] @ t_img.T - bank.share * bias_img[None, :]
            photos = torch.unique(owner[rows])
            i2t = images[photos] @ texts.T
            teacher_i2t = t_img[photos] @ t_txt.T - bank.share * bias_txt[None, :]
            kd = sum(F.kl_div(F.log_softmax(s * scale, 1), F.softmax(t / args.temperature, 1), reduction="batchmean")
                     for s, t in ((t2i, teacher), (i2t, teacher_i2t)))
            loss = F.cross_entropy(t2i * scale, owner[rows]) + args.weight * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
        student.eval()
        plain, normed = dev_rsum(student)
        student.train()
        print(f"epoch {epoch}: dev RSUM alone {plain:.2f}, normalised (v4 bank) {normed:.2f}, "
              f"{time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
