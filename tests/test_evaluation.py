"""Evaluation: mAP@R / R-Precision / ranks by hand and against eccv_caption, folds, MRV, dataset
formats, and the `crossmodal eval` command with its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SAMPLES, make_photo
from crossmodal.cli import app
from crossmodal.evaluation.metrics import (
    folded_metrics,
    mean_rank_variance,
    per_language_metrics,
    positive_ranks,
    r_precision_and_map_at_r,
    rank_summary,
    recall_metrics,
    retrieval_ranks,
)
from crossmodal.sources.datasets import load_dataset


def test_map_at_r_and_r_precision_by_hand() -> None:
    # query A: 3 positives at ranks 0, 2, 5 -> top-3 holds 2 of them: R-P = 2/3;
    #   mAP@R = (1/1 + 2/3 + 0) / 3 = 0.5556
    # query B: 2 positives at ranks 1, 2 -> top-2 holds 1: R-P = 1/2; mAP@R = (0 + 1/2) / 2 = 0.25
    # query C: no positive -> left out
    ranks = np.array([[0, 2, 5], [1, 2, -1], [-1, -1, -1]])
    r_prec, map_r = r_precision_and_map_at_r(ranks)
    assert r_prec == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert map_r == pytest.approx(100 * ((1 + 2 / 3) / 3 + (1 / 2) / 2) / 2)
    assert rank_summary(ranks[:2]) == {"medr": 1.5, "meanr": 1.5}


def test_positive_ranks_with_ties() -> None:
    scores = np.array([[0.5, 0.5, 0.5, 0.9]])
    # item 3 first; then the three tied items in index order: 0 -> 1, 1 -> 2, 2 -> 3
    assert positive_ranks(scores, np.array([[2, 0, -1]])).tolist() == [[1, 3, -1]]


def _eccv_rankings(scores: np.ndarray) -> dict[int, list[int]]:
    order = np.argsort(-scores, axis=1, kind="stable")
    return {q: order[q].tolist() for q in range(len(scores))}


@pytest.mark.parametrize(("n_images", "per_image", "dim"), [(20, 5, 8), (60, 3, 16), (15, 7, 4)])
def test_map_at_r_matches_eccv_caption(n_images: int, per_image: int, dim: int) -> None:
    eccv = pytest.importorskip("eccv_caption._metrics")
    rng = np.random.default_rng(n_images)
    image = rng.normal(size=(n_images, dim)).astype(np.float32)
    owner = np.repeat(np.arange(n_images), per_image)
    text = (image[owner] + rng.normal(scale=1.2, size=(len(owner), dim))).astype(np.float32)
    ours = recall_metrics(image, text, owner)
    i2t_gt = {i: np.flatnonzero(owner == i).tolist() for i in range(n_images)}
    ref_i2t = eccv.compute_eccv_metrics(_eccv_rankings(image @ text.T), i2t_gt)
    t2i_gt = {j: [int(owner[j])] for j in range(len(owner))}
    ref_t2i = eccv.compute_eccv_metrics(_eccv_rankings(text @ image.T), t2i_gt)
    assert ours["i2t_mAP@R"] == pytest.approx(100 * ref_i2t["eccv_map_at_r"])
    assert ours["i2t_R-Precision"] == pytest.approx(100 * ref_i2t["eccv_rprecision"])
    assert ours["i2t_R@1"] == pytest.approx(100 * ref_i2t["eccv_r1"])
    assert ours["t2i_mAP@R"] == pytest.approx(100 * ref_t2i["eccv_map_at_r"])
    assert ours["t2i_R@1"] == pytest.approx(100 * ref_t2i["eccv_r1"])


def test_folds_average_independent_parts() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(10, 6)).astype(np.float32)
    owner = np.repeat(np.arange(10), 2)
    text = (image[owner] + rng.normal(scale=2.0, size=(20, 6))).astype(np.float32)
    folded = folded_metrics(image, text, owner, folds=2)
    first = recall_metrics(image[:5], text[:10], owner[:10])
    second = recall_metrics(image[5:], text[10:], owner[10:] - 5)
    assert folded["t2i_R@1"] == pytest.approx((first["t2i_R@1"] + second["t2i_R@1"]) / 2)
    assert folded["rsum"] == pytest.approx((first["rsum"] + second["rsum"]) / 2)
    assert folded["i2t_R@5"] >= recall_metrics(image, text, owner)["i2t_R@5"]  # 5 candidates, not 10


def test_mean_rank_variance_by_hand() -> None:
    # group g1: en rank 1, de rank 3 -> variance 1; group g2: en 2, de 2 -> 0; group g3 only en -> ignored
    first = np.array([0, 2, 1, 1, 4])
    langs = ["en", "de", "en", "de", "en"]
    groups = ["g1", "g1", "g2", "g2", "g3"]
    assert mean_rank_variance(first, langs, groups) == pytest.approx(0.5)


def test_per_language_metrics_rank_each_language_alone() -> None:
    # 3 photos; each has an English caption equal to its vector and a German one pointing at the next photo
    image = np.eye(3, dtype=np.float32)
    text = np.concatenate([np.eye(3), np.roll(np.eye(3), 1, axis=0)]).astype(np.float32)
    owner = np.array([0, 1, 2, 0, 1, 2])
    langs = ["en"] * 3 + ["de"] * 3
    by_lang = per_language_metrics(image, text, owner, langs, retrieval_ranks(image, text, owner)[1])
    assert by_lang["en"] == recall_metrics(image, text[:3], owner[:3])
    assert by_lang["en"]["t2i_R@1"] == by_lang["en"]["i2t_R@1"] == 100.0
    # German captions rank their photo second of three: R@1 0, R@5 100 both ways
    assert by_lang["de"]["t2i_R@1"] == by_lang["de"]["i2t_R@1"] == 0.0
    assert by_lang["de"]["t2i_R@5"] == by_lang["de"]["i2t_R@5"] == 100.0
    assert by_lang["de"]["rsum"] == pytest.approx(400.0)


def test_retrieval_ranks_in_blocks_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    import crossmodal.evaluation.metrics as metrics

    rng = np.random.default_rng(5)
    image, text = rng.normal(size=(40, 8)), rng.normal(size=(120, 8))
    owner = rng.integers(0, 40, 120)
    whole = retrieval_ranks(image, text, owner)
    monkeypatch.setattr(metrics, "BLOCK", 7)
    blocked = retrieval_ranks(image, text, owner)
    assert all(np.array_equal(a, b) for a, b in zip(whole, blocked, strict=True))
    assert (whole[0][np.bincount(owner, minlength=40) == 0] == -1).all()  # photos without captions


def test_karpathy_and_table_formats(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        make_photo(tmp_path / "val2014" / name, (10, 20, 30))
    karpathy = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "one"}, {"raw": "two"}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "val", "sentences": [{"raw": "three"}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "sentences": [{"tokens": ["four", "x"]}]},
    ]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    test = load_dataset(f"karpathy:{tmp_path / 'dataset_coco.json'}", "test")
    assert [p.name for p in test.images] == ["a.jpg", "c.jpg"] and test.texts == ["one", "two", "four x"]
    assert test.text_image.tolist() == [0, 0, 1] and test.images[0].is_file()
    assert load_dataset(str(tmp_path / "dataset_coco.json"), "dev").texts == ["three"]
    with pytest.raises(ValueError, match="splits present"):
        load_dataset(f"karpathy:{tmp_path / 'dataset_coco.json'}", "train")

    (tmp_path / "multi.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"image": "val2014/a.jpg", "caption": "a dog", "lang": "en", "group": "1"},
        {"image": "val2014/a.jpg", "caption": "ein Hund", "lang": "de", "group": "1"},
        {"image": "val2014/b.jpg", "caption": "a cat", "lang": "en", "group": "2"},
    ]))
    table = load_dataset(tmp_path / "multi.jsonl", "test")
    assert table.langs == ["en", "de", "en"] and table.groups == ["1", "1", "2"]
    assert table.text_image.tolist() == [0, 0, 1] and table.images[1] == tmp_path / "val2014/b.jpg"
    with pytest.raises(FileNotFoundError, match="not a dataset"):
        load_dataset(tmp_path / "nothing.txt", "test")


def test_eval_command_writes_a_report_and_compares(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", "--dataset", str(SAMPLES / "captions.tsv"), "--split", "all",
                                 "--images", str(SAMPLES / "photos"), "--report", str(out), "--k", "3", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum", "i2t_mAP@R",
                "t2i_mAP@R", "i2t_R@3"):
        assert 0 <= report["metrics"][key] <= (600 if key == "rsum" else 100)
    assert report["dataset"]["images"] == 35 and report["dataset"]["texts"] == 175
    assert report["model"]["name"] == "lite" and "crossmodal" in report["command"]
    assert report["metrics"]["i2t_R@10"] > 80  # 35 photos: the demo set is easy for the default model
    assert (out / "recall_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "RSUM" in (out / "report.md").read_text()

    other = json.loads((out / "report.json").read_text())
    other["metrics"]["rsum"] -= 12.5
    (tmp_path / "b.json").write_text(json.dumps(other))
    result = runner.invoke(app, ["eval", "compare", str(out), str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert "-12.50" in result.output and "rsum" in result.output


def test_eval_without_dataset_or_photos_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["eval"])
    assert result.exit_code == 2 and "give --dataset" in result.output
    result = CliRunner().invoke(app, ["eval", "--dataset", str(SAMPLES / "captions.tsv"), "-q"])
    assert result.exit_code == 2 and "none of the 35 photos could be read" in result.output
