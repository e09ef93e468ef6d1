"""Probe: distil the ranking pipeline's scores into lite's heads (dev; test once with --test; nothing shipped).

    python benchmarks/distill_heads.py [--epochs 3] [--weight 1.0] [--temperature 0.05] [--lr 3e-4]
        [--train both|image|text] [--teacher norm|pipeline] [--side both|query|caption] [--test]

The towers stay as they are (features cached by `crossmodal train --reranker`, under --cache); only
the linear heads train (both; the photo head alone, which keeps lite's text space and so the multilingual
tower that writes into it; or the text head alone, which keeps every stored photo), from lite's own, on Flickr8k
`train`: InfoNCE on the true pairs plus KL divergence to the teacher's softmax over all train photos (for each
caption) and all train captions (for each photo of the batch). The teacher is lite's normalised scores
(search/normalise.py with the shipped bank), or the default pipeline's scores as search gives them (hybrid, the
top 16 fused with the reranker, the rest capped under them; computed once and kept under --cache). ``--side``
(text head): the student encodes caption queries only, stored captions only (what photo queries rank), or both,
and distils only the matching direction. Prints RSUM of the student alone, normalised with the shipped (v4) bank
and with a bank of its own (its vectors of the train photos and 2 captions each, as lite's is built), and through
the default pipeline (hybrid, rerank 16, captions as stored, photo queries with their mirror images) with each
bank, after each epoch, beside lite's own; with ``--test``, the last epoch's heads and lite's on test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mirror_head import pooled as photo_and_mirror
from safetensors.torch import load_file

from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import Encoder, normalize
from crossmodal.encoders.lite import WEIGHTS, LiteEncoder, LiteHeads
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.evaluation.runner import Embedded, embed_dataset, pipeline_scores
from crossmodal.rerank.runtime import Reranker
from crossmodal.search.normalise import Bank, find_bank
from crossmodal.search.pipeline import Ranking
from crossmodal.search.rerank import find_reranker
from crossmodal.sources.datasets import load_dataset
from crossmodal.training.distill_lite import pipeline_teacher
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


def ranking_cells(encoder: Encoder, emb: Embedded, banks: dict[str, Bank], reranker: Reranker) -> str:
    """RSUM (and its text -> photo part) of ``emb`` ranked by the pipeline: alone, normalised with each of ``banks``,
    and the default pipeline with each."""
    cells = []
    for name, ranking in (("alone", Ranking(norm=False, rerank=0, retriever="dense")),
                          ("normalised", Ranking(rerank=0, retriever="dense")), ("default pipeline", Ranking())):
        for bank_name, bank in banks.items() if ranking.norm else (("", None),):
            m = evaluate_embeddings(emb.images, emb.texts, emb.data.text_image,
                                    pipeline_scores(encoder, emb, ranking, bank, reranker)).metrics()
            t2i = sum(m[f"t2i_R@{k}"] for k in (1, 5, 10))
            cells.append(f"{name}{f' ({bank_name})' if bank_name else ''} {m['rsum']:.2f} (t2i {t2i:.2f})")
    return ", ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(FLICKR))
    parser.add_argument("--cache", default="runs/cache/reranker")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the distillation terms")
    parser.add_argument("--temperature", type=float, default=0.05, help="teacher softmax temperature")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train", choices=("both", "image", "text"), default="both", help="which heads train")
    parser.add_argument("--teacher", choices=("norm", "pipeline"), default="norm",
                        help="lite's normalised scores, or the default pipeline's as search gives them")
    parser.add_argument("--side", choices=("both", "query", "caption"), default="both",
                        help="what the student encodes: caption queries, stored captions, or both")
    parser.add_argument("--test", action="store_true", help="after training, evaluate lite and the student on test")
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = load_encoder("lite")  # the default (ONNX, multilingual tower) for the pipeline's stages
    bank, reranker = find_bank(encoder.fingerprint), find_reranker(encoder.fingerprint)
    torch_lite = LiteEncoder(WEIGHTS)  # the towers the cached features and the mirror images are read with
    train = cached_features(torch_lite, load_dataset(args.dataset, "train"), Path(args.cache))
    x_img, x_txt = pooled(train)
    owner = torch.from_numpy(train.text_image)
    if args.teacher == "pipeline":
        teach_t2i, teach_i2t = pipeline_teacher(encoder, load_dataset(args.dataset, "train"), bank, reranker,
                                                Path(args.cache))
    else:
        image_vec, text_vec = train.image_vec, train.text_vec
        teach_t2i = torch.from_numpy(text_vec @ image_vec.T - bank.share * bank.biases("image", image_vec))
        teach_i2t = torch.from_numpy(image_vec @ text_vec.T - bank.share * bank.biases("text", text_vec))
    two_each = np.concatenate([np.flatnonzero(train.text_image == i)[:2] for i in range(len(train.image_vec))])

    def split_rsums(split: str) -> Callable[[LiteHeads], str]:
        """RSUM of a student's heads on ``split`` in each configuration, as search would rank it."""
        data = load_dataset(args.dataset, split)
        d_img, d_txt = pooled(cached_features(torch_lite, data, Path(args.cache)))
        mirror_cache = Path(args.cache).parent / "mirror-head" / f"{split}.npy"  # as mirror_head.py keeps them
        d_mirror = torch.from_numpy(photo_and_mirror(torch_lite, list(data.images), mirror_cache)[:, 1])
        emb = embed_dataset(encoder, data, progress=False, reranker=reranker)
        tower = encoder.multilingual.encode(list(emb.data.texts)) if encoder.caption_recipe else None
        share = encoder.multilingual.caption_share if tower is not None else 0.0

        def rsums(heads: LiteHeads) -> str:
            images, texts = embed(heads, d_img, d_txt)
            mirrored, _ = embed(heads, d_mirror, d_txt[:1])
            train_images, train_texts = embed(heads, x_img, x_txt)
            own = Bank(train_texts[two_each], train_images, "student")
            stored = emb.texts if args.side == "query" else texts
            student = replace(emb, images=images, texts=emb.texts if args.side == "caption" else texts,
                              photo_queries=normalize(images + mirrored),
                              captions=stored if tower is None else normalize((1 - share) * stored + share * tower))
            return ranking_cells(encoder, student, {"v4 bank": bank, "own bank": own}, reranker)

        return rsums

    dev_rsum = split_rsums("dev")
    print(f"lite v4: dev RSUM {dev_rsum(LiteHeads.from_state(load_file(str(WEIGHTS))))}", flush=True)
    student = LiteHeads.from_state(load_file(str(WEIGHTS))).train()
    trained = {"both": student, "image": student.image, "text": student.text}[args.train].parameters()
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.1)
    scale, started = 1 / 0.05, time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_txt), generator=torch.Generator().manual_seed(epoch))  # whatever ran before
        for start in range(0, len(x_txt), 512):
            rows = order[start:start + 512]
            images = F.normalize(student.image(x_img), dim=-1)
            texts = F.normalize(student.text(x_txt), dim=-1)
            t2i = texts[rows] @ images.T
            teacher = teach_t2i[rows]
            photos = torch.unique(owner[rows])
            i2t = images[photos] @ texts.T
            teacher_i2t = teach_i2t[photos]
            terms = {"query": [(t2i, teacher)], "caption": [(i2t, teacher_i2t)]}.get(
                args.side, [(t2i, teacher), (i2t, teacher_i2t)])
            kd = sum(F.kl_div(F.log_softmax(s * scale, 1), F.softmax(t / args.temperature, 1), reduction="batchmean")
                     for s, t in terms)
            positives = (owner[None, :] == photos[:, None]).float()
            nce_i2t = -(F.log_softmax(i2t * scale, 1) * positives).sum(1).div(positives.sum(1)).mean()
            nce = {"query": F.cross_entropy(t2i * scale, owner[rows]), "caption": nce_i2t}.get(
                args.side, F.cross_entropy(t2i * scale, owner[rows]))
            loss = nce + args.weight * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
        student.eval()
        print(f"epoch {epoch} ({time.time() - started:.0f} s): dev RSUM {dev_rsum(student)}", flush=True)
        student.train()
    if args.test:  # the last epoch's heads, and lite's, on test: once, for the configuration chosen on dev
        test_rsum = split_rsums("test")
        print(f"test: lite v4: {test_rsum(LiteHeads.from_state(load_file(str(WEIGHTS))))}", flush=True)
        print(f"test: distilled: {test_rsum(student.eval())}", flush=True)


if __name__ == "__main__":
    main()
