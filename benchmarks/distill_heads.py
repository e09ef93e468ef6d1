"""Probe: distil the ranking pipeline's normalised scores into lite's heads (dev only; nothing shipped).

    python benchmarks/distill_heads.py [--epochs 3] [--weight 1.0] [--temperature 0.05] [--lr 3e-4]
        [--train both|image]

The towers stay as they are (features cached by `crossmodal train --reranker`, under --cache); only
the linear heads train (both, or the photo head alone, which keeps lite's text space and so the multilingual
tower that writes into it), from lite's own, on Flickr8k `train`: InfoNCE on the true pairs plus
KL divergence to the teacher's softmax over all train photos (for each caption) and all train captions
(for each photo of the batch), the teacher being lite's normalised scores (search/normalise.py with
the shipped bank). Prints dev RSUM of the student alone, normalised with the shipped (v4) bank and with a bank
of its own (its vectors of the train photos and 2 captions each, as lite's is built), and through the default
pipeline (hybrid, rerank 16, captions as stored) with each bank, after each epoch, beside lite's own. It answers
one question for a later lite v5: how much of what normalisation gives can the dual encoder learn itself.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import normalize
from crossmodal.encoders.lite import WEIGHTS, LiteEncoder, LiteHeads
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.evaluation.runner import embed_dataset, pipeline_scores
from crossmodal.search.normalise import Bank, find_bank
from crossmodal.search.pipeline import Ranking
from crossmodal.search.rerank import find_reranker
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
    parser.add_argument("--train", choices=("both", "image"), default="both", help="which heads train")
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = load_encoder("lite")  # the default (ONNX, multilingual tower) for the pipeline's stages
    bank, reranker = find_bank(encoder.fingerprint), find_reranker(encoder.fingerprint)
    train, dev = (cached_features(LiteEncoder(WEIGHTS), load_dataset(args.dataset, s), Path(args.cache))
                  for s in ("train", "dev"))
    (x_img, x_txt), (d_img, d_txt) = pooled(train), pooled(dev)
    emb = embed_dataset(encoder, load_dataset(args.dataset, "dev"), progress=False, reranker=reranker)
    tower = encoder.multilingual.encode(list(emb.data.texts)) if encoder.caption_recipe else None
    share = encoder.multilingual.caption_share if tower is not None else 0.0
    owner = torch.from_numpy(train.text_image)
    t_img, t_txt = torch.from_numpy(train.image_vec), torch.from_numpy(train.text_vec)
    bias_img = torch.from_numpy(bank.biases("image", train.image_vec))
    bias_txt = torch.from_numpy(bank.biases("text", train.text_vec))
    two_each = np.concatenate([np.flatnonzero(train.text_image == i)[:2] for i in range(len(train.image_vec))])
    configurations = {"alone": Ranking(norm=False, rerank=0, retriever="dense"),
                      "normalised": Ranking(rerank=0, retriever="dense"), "default pipeline": Ranking()}

    def dev_rsum(heads: LiteHeads) -> str:
        images, texts = embed(heads, d_img, d_txt)
        train_images, train_texts = embed(heads, x_img, x_txt)
        own = Bank(train_texts[two_each], train_images, "student")
        student = replace(emb, images=images, texts=texts, photo_queries=None,
                          captions=texts if tower is None else normalize((1 - share) * texts + share * tower))
        cells = []
        for name, ranking in configurations.items():
            for bank_name, b in (("v4 bank", bank), ("own bank", own)) if ranking.norm else (("", None),):
                score = pipeline_scores(encoder, student, ranking, b, reranker)
                rsum = evaluate_embeddings(images, texts, emb.data.text_image, score).metrics()["rsum"]
                cells.append(f"{name}{f' ({bank_name})' if bank_name else ''} {rsum:.2f}")
        return ", ".join(cells)

    print(f"lite v4: dev RSUM {dev_rsum(LiteHeads.from_state(load_file(str(WEIGHTS))))}", flush=True)
    student = LiteHeads.from_state(load_file(str(WEIGHTS))).train()
    trained = student.parameters() if args.train == "both" else student.image.parameters()
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.1)
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
        print(f"epoch {epoch} ({time.time() - started:.0f} s): dev RSUM {dev_rsum(student)}", flush=True)
        student.train()


if __name__ == "__main__":
    main()
