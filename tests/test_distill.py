"""`crossmodal train --distill`: lite's default pipeline as the teacher of its own towers (training/distill_lite.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import FLICKR, needs_flickr
from crossmodal.cli import app
from crossmodal.encoders import load_encoder
from crossmodal.encoders.lite_spec import WEIGHTS
from crossmodal.evaluation.metrics import evaluate_embeddings
from crossmodal.evaluation.runner import embed_dataset, pipeline_scores
from crossmodal.search.normalise import find_bank
from crossmodal.search.pipeline import Ranking
from crossmodal.search.rerank import find_reranker
from crossmodal.sources.datasets import load_dataset
from crossmodal.training.distill_lite import DistilConfig, distil, pipeline_teacher, student_task

runner = CliRunner()


def _kl(task, teacher: tuple[torch.Tensor, torch.Tensor], config: DistilConfig) -> float:
    """The distillation term over the whole train split, both ways, for the student as it is now."""
    images, texts = (torch.from_numpy(v) for v in task.module.embed_split(task.train))
    return float(sum(F.kl_div(F.log_softmax(s * config.scale, 1), F.softmax(t / config.temperature, 1),
                              reduction="batchmean") for s, t in ((texts @ images.T, teacher[0]),
                                                                  (images @ texts.T, teacher[1]))))


@needs_flickr
def test_the_teacher_is_the_pipeline_and_the_student_moves_towards_it(tmp_path: Path) -> None:
    train = load_dataset(FLICKR, "train").subset_images(np.arange(6000) < 40)
    dev = load_dataset(FLICKR, "dev").subset_images(np.arange(1000) < 20)
    encoder = load_encoder("lite")
    bank, reranker = find_bank(encoder.fingerprint), find_reranker(encoder.fingerprint)
    teacher = pipeline_teacher(encoder, train, bank, reranker, tmp_path / "cache", log=lambda line: None)
    assert tuple(teacher[0].shape) == (len(train.texts), 40) and tuple(teacher[1].shape) == (40, len(train.texts))
    # ranked by the teacher's scores, the split scores what eval reports for the default pipeline
    emb = embed_dataset(encoder, train, progress=False, reranker=reranker)
    expected = evaluate_embeddings(emb.images, emb.texts, train.text_image,
                                   pipeline_scores(encoder, emb, Ranking(), bank, reranker)).metrics()
    matrices = {"t2i": teacher[0].numpy(), "i2t": teacher[1].numpy()}
    got = evaluate_embeddings(emb.images, emb.texts, train.text_image,
                              lambda d, q, i: matrices[d][np.ix_(q, i)]).metrics()
    assert abs(got["rsum"] - expected["rsum"]) < 1e-6
    assert torch.equal(pipeline_teacher(encoder, train, bank, reranker, tmp_path / "cache")[0], teacher[0])  # kept

    # six steps of 16 photos: a small lr, as the recipe's warm-up gives its first steps
    config = DistilConfig(epochs=3, lr=1e-5, batch_size=16, views=2)
    task = student_task(WEIGHTS, train, dev, tmp_path / "acts", views=2)
    before = _kl(task, teacher, config)
    history = distil(task, teacher, tmp_path / "out", config, log=lambda line: None)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert _kl(task, teacher, config) < 0.9 * before  # 0.141 -> 0.100 when written
    best = max(history, key=lambda h: h["dev_rsum"])
    with safe_open(str(tmp_path / "out" / "lite.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["epoch"] == str(best["epoch"]) and json.loads(meta["distilled"])["lr"] == 1e-5
    saved = json.loads((tmp_path / "out" / "training" / "history.json").read_text())
    assert saved["history"] == history


def test_distill_refuses_a_model_without_its_pipeline_and_other_modes(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    with safe_open(str(WEIGHTS), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(state, str(folder / "lite.safetensors"), {"note": "other weights"})  # no bank or reranker is theirs
    result = runner.invoke(app, ["train", "--distill", "--model", str(folder), "--data", str(tmp_path),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "has no bank" in result.output
    result = runner.invoke(app, ["train", "--distill", "--reranker", "--data", str(tmp_path), "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code != 0 and "choose one of" in result.output
