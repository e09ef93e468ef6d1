"""Training the caption-word classifier (rerank/words.py) on a split's pooled photo features and captions.

The vocabulary is train_sparse's (WordPiece words of the training captions seen 3 times, common words left
out); a photo's targets are the words of all its captions; binary cross-entropy on standardised features,
AdamW. idf comes from the same captions. The share of the evidence is chosen on dev by the caller
(benchmarks/word_evidence.py measures it through the eval pipeline).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..rerank.words import WordModel, bags, lite_tokenizer, position_table
from .train_sparse import vocabulary


def train_words(pooled: np.ndarray, texts: list[str], text_image: np.ndarray, share: float, epochs: int = 40,
                lr: float = 1e-2, weight_decay: float = 1e-2, batch: int = 500, seed: int = 0
                ) -> tuple[WordModel, list[float]]:
    """A word classifier from photos' pooled features (N, F) and their captions (``text_image``: each caption's
    photo), and the mean loss of each epoch; ValueError when no caption word is frequent enough for one."""
    torch.manual_seed(seed)
    tokenize, tokens = lite_tokenizer()
    ids = tokenize(texts)
    vocab = vocabulary(ids, tokens)
    if not len(vocab):
        raise ValueError("no caption word is frequent enough for a word classifier")
    caption_bags = bags(ids, position_table(vocab))
    targets = np.zeros((len(pooled), len(vocab)), dtype=np.float32)
    counts = np.zeros(len(vocab))
    for j, words in enumerate(caption_bags):
        targets[text_image[j], words] = 1.0
        counts[words] += 1
    idf = np.log((len(caption_bags) + 1) / (counts + 1)).astype(np.float32)
    pooled = np.asarray(pooled, dtype=np.float32)
    mean, scale = pooled.mean(0), pooled.std(0) + 1e-3
    x, y = torch.from_numpy((pooled - mean) / scale), torch.from_numpy(targets)
    layer = torch.nn.Linear(x.shape[1], len(vocab))
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for _ in range(epochs):
        losses = []
        for rows in torch.randperm(len(x)).split(batch):
            loss = F.binary_cross_entropy_with_logits(layer(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
    with torch.no_grad():
        weight, bias = layer.weight.T.numpy().copy(), layer.bias.numpy().copy()
    return WordModel(vocab, idf, weight, bias, mean, scale, share), history
