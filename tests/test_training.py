"""Training: losses against hand-worked values, the loop's batches, resume and reproducibility, a tiny
lite run on real Flickr8k photos, and a tiny transformers model through `crossmodal train`."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import FLICKR, make_photo, needs_flickr
from crossmodal.cli import app, parse_unfreeze
from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import Encoder
from crossmodal.encoders.lite import LiteHeads
from crossmodal.sources.datasets import load_dataset
from crossmodal.sources.images import load_image
from crossmodal.training import losses
from crossmodal.training.lite_tasks import FeatureTask, pick_views
from crossmodal.training.loop import TrainConfig, epoch_batches, fit

TEXT = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
IMAGE = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # cosines: t0.i0 = 1, t0.i1 = 0.6, t1.i0 = 0, t1.i1 = 0.8
EYE = torch.eye(2, dtype=torch.bool)


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_infonce_matches_hand_value() -> None:
    t2i = -math.log(math.e / (math.e + math.exp(0.6))) - math.log(math.exp(0.8) / (1 + math.exp(0.8)))
    i2t = -math.log(math.e / (math.e + 1)) - math.log(math.exp(0.8) / (math.exp(0.6) + math.exp(0.8)))
    got = losses.infonce(TEXT, IMAGE, EYE, torch.tensor(0.0))
    assert got.item() == pytest.approx((t2i / 2 + i2t / 2) / 2, rel=1e-6)


def test_siglip_matches_hand_value() -> None:
    expected = -(_logsig(1.0) + _logsig(-0.6) + _logsig(-0.0) + _logsig(0.8)) / 2
    got = losses.siglip(TEXT, IMAGE, EYE, torch.tensor(0.0), torch.tensor(0.0))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_vsepp_matches_hand_value() -> None:
    # t0/i0: hardest negative photo i1 (0.6) violates by 0.1, hardest negative caption t1 (0) does not;
    # t1/i1: hardest negative photo i0 (0) does not, hardest negative caption t0 (0.6) violates by 0.3.
    assert losses.vsepp(TEXT, IMAGE, EYE, margin=0.5).item() == pytest.approx(0.4 / 2, rel=1e-6)


def test_captions_of_one_photo_are_not_each_others_negatives() -> None:
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # t0 and t1 both describe i0
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[True, False], [True, False], [False, True]])
    assert losses.vsepp(text, image, positive, margin=0.5).item() == 0.0
    # infonce: photo i0 spreads its target over t0 and t1 (1/2 each) instead of treating t1 as a negative
    col0 = -0.5 * 2 * math.log(math.e / (2 * math.e + 1))
    col1 = -math.log(math.e / (math.e + 2))
    rows = 3 * -math.log(math.e / (math.e + 1))
    got = losses.infonce(text, image, positive, torch.tensor(0.0))
    assert got.item() == pytest.approx((rows / 3 + (col0 + col1) / 2) / 2, rel=1e-6)
    assert losses.siglip(text, image, positive, torch.tensor(0.0), torch.tensor(0.0)).item() == pytest.approx(
        -(3 * _logsig(1.0) + 3 * _logsig(0.0)) / 3, rel=1e-6)


def test_epoch_batches_cover_each_photo_once_with_its_own_captions() -> None:
    text_image = np.repeat(np.arange(10), 3)
    batches = epoch_batches(text_image, TrainConfig(batch_size=4, captions_per_image=2), np.random.default_rng(0))
    assert len(batches) == 2  # 10 photos, batches of 4, the incomplete one dropped
    photos = np.concatenate([b[0] for b in batches])
    assert len(set(photos.tolist())) == 8
    for images, texts in batches:
        assert len(texts) == 8 and set(text_image[texts].tolist()) == set(images.tolist())


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photo features and 2 noisy captions each, both fixed linear views of a hidden factor per photo."""
    mix = np.random.default_rng(99)
    to_image, to_text = mix.normal(size=(8, 1280)), mix.normal(size=(8, 384))
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(n, 8))
    owner = np.repeat(np.arange(n), 2)
    images = factor @ to_image + rng.normal(size=(n, 1280))
    texts = (factor[owner] + 0.3 * rng.normal(size=(2 * n, 8))) @ to_text + rng.normal(size=(2 * n, 384))
    return images.astype(np.float32), texts.astype(np.float32), owner


def _heads_task() -> FeatureTask:
    torch.manual_seed(0)
    return FeatureTask(LiteHeads(32, dropout=0.2), _synthetic(64, 0), _synthetic(32, 1))


def test_training_on_features_learns_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    config = TrainConfig(epochs=6, batch_size=16, patience=6, lr=3e-3)
    history = fit(_heads_task(), config, tmp_path, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    best = max(history, key=lambda h: h["dev_rsum"])
    assert best["dev_rsum"] > 100  # chance on 32 photos is about 6 + 16 + 31 per direction
    saved = LiteHeads.load(tmp_path / "lite.safetensors")
    task = _heads_task()
    task.module.load_state_dict(saved.state_dict())
    assert task.dev_metrics()["rsum"] == pytest.approx(best["dev_rsum"])


def test_resume_after_interruption_gives_the_same_result(tmp_path: Path) -> None:
    config = TrainConfig(epochs=4, batch_size=16, patience=4)
    straight = fit(_heads_task(), config, tmp_path / "a", progress=False)

    task = _heads_task()
    calls = {"n": 0}
    dev_metrics = task.dev_metrics

    def interrupted() -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return dev_metrics()

    task.dev_metrics = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        fit(task, config, tmp_path / "b", progress=False)
    resumed_task = _heads_task()
    epochs_run = {"n": 0}
    resumed_dev_metrics = resumed_task.dev_metrics

    def counted() -> dict[str, float]:
        epochs_run["n"] += 1
        return resumed_dev_metrics()

    resumed_task.dev_metrics = counted  # type: ignore[method-assign]
    resumed = fit(resumed_task, config, tmp_path / "b", progress=False)
    assert epochs_run["n"] == 2  # epochs 1-2 came from the checkpoint; only 3 and 4 ran again
    assert [h["loss"] for h in resumed] == [h["loss"] for h in straight]
    assert [h["dev_rsum"] for h in resumed] == [h["dev_rsum"] for h in straight]
    a, b = load_file(str(tmp_path / "a" / "lite.safetensors")), load_file(str(tmp_path / "b" / "lite.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    fit(_heads_task(), TrainConfig(epochs=1, batch_size=16), tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        fit(_heads_task(), TrainConfig(epochs=1, batch_size=16, lr=0.5), tmp_path, progress=False)


def test_mirrored_views_are_never_drawn_for_photos_whose_captions_say_left_or_right() -> None:
    mirrored = np.tile(np.array([False, True, False, True]), (50, 1))  # views 1 and 3 are mirror images
    images = np.arange(50)
    no_mirror = images % 2 == 0
    views = np.concatenate([pick_views(mirrored, images, no_mirror, np.random.default_rng(s)) for s in range(20)])
    flagged = np.tile(no_mirror, 20)
    assert not mirrored[np.tile(images, 20), views][flagged].any()
    assert set(views[~flagged].tolist()) == {0, 1, 2, 3}  # the other photos draw every view
    assert set(views[flagged].tolist()) == {0, 2}


def test_parse_unfreeze() -> None:
    assert parse_unfreeze("heads") == (0, 0)
    assert parse_unfreeze("last:2") == (2, 2)
    assert parse_unfreeze("image:3,text:1") == (3, 1)
    for bad in ("last", "last:x", "lots:2", ""):
        with pytest.raises(ValueError, match="--unfreeze"):
            parse_unfreeze(bad)


@pytest.mark.parametrize(("image_blocks", "text_layers"), [(1, 1), (5, 4), (16, 6)])
def test_activations_cached_at_any_cut_give_the_towers_own_features(tmp_path: Path, image_blocks: int,
                                                                     text_layers: int) -> None:
    from crossmodal.encoders.lite import LiteTowers
    from crossmodal.sources.datasets import CaptionDataset
    from crossmodal.training.activations import compute_activations
    from crossmodal.training.lite_model import LiteTrainable

    photos = [make_photo(tmp_path / f"p{i}.png", c, size=(80, 60), noise=30) for i, c in
              enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)])]
    texts = ["a red photo", "a green photo of a field with grass", "blue"]
    data = CaptionDataset("tiny", photos, texts, np.arange(3))
    towers = LiteTowers()
    with torch.inference_mode():
        expected_images = towers.image_features(towers.pixels([load_image(p) for p in photos]))
        expected_texts = towers.text_features(towers.tokenize(texts))
    model = LiteTrainable(towers, LiteHeads(16), image_blocks, text_layers).eval()
    acts = compute_activations(towers, data, model.image_from, model.text_from, n_views=2)
    assert acts.images.shape[:2] == (3, 2) and acts.mirrored[:, 1].all()
    images, captions = model.split_features(acts)
    # activations are stored in float16
    assert torch.allclose(images, expected_images, atol=0.05, rtol=0.02)
    assert torch.allclose(captions, expected_texts, atol=5e-3)


def test_captions_run_in_length_groups_give_the_same_features_in_the_same_order(tmp_path: Path) -> None:
    from crossmodal.encoders.lite import LiteTowers
    from crossmodal.sources.datasets import CaptionDataset
    from crossmodal.training.activations import compute_activations
    from crossmodal.training.lite_model import LiteTrainable

    texts = ["a dog runs across the wet green grass toward a red ball", "dog", "two children play on a beach",
             "a man", "a black and white cat sleeps"]
    data = CaptionDataset("tiny", [make_photo(tmp_path / "p.png", (90, 90, 90))], texts, np.zeros(5, dtype=int))
    towers = LiteTowers()
    model = LiteTrainable(towers, LiteHeads(16), 0, 2).eval()
    acts = compute_activations(towers, data, model.image_from, model.text_from)
    hidden, mask = acts.text_batch(np.arange(5))
    with torch.inference_mode():
        one_group = model.text_features(hidden, mask, bucket=5)
        pairs = model.text_features(hidden, mask, bucket=2)
        alone = torch.cat([model.text_features(hidden[i:i + 1], mask[i:i + 1]) for i in range(5)])
    assert torch.allclose(one_group, pairs, atol=1e-5)
    assert torch.allclose(pairs, alone, atol=1e-5)  # row i is caption i, whatever group it ran in
    assert not torch.allclose(alone[0], alone[1], atol=0.05)
    model.train()
    model.text_features(hidden, mask, bucket=2).sum().backward()
    assert all(p.grad is not None for p in model.tower_parameters())


def test_the_same_lite_run_twice_gives_the_same_numbers(tmp_path: Path) -> None:
    from crossmodal.training.train_lite import readable, train_lite

    table = str(_tiny_table(tmp_path / "data"))
    train, dev = readable(load_dataset(table, "train"), lambda line: None), load_dataset(table, "dev")
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, tower_lr=1e-3)
    runs = [train_lite(train, dev, tmp_path / f"run{i}", config, image_blocks=1, text_layers=1, views=2, dim=16,
                       cache=tmp_path / "cache", progress=False) for i in range(2)]
    assert [h["loss"] for h in runs[0]] == [h["loss"] for h in runs[1]]
    assert [h["dev_rsum"] for h in runs[0]] == [h["dev_rsum"] for h in runs[1]]
    first, second = (load_file(str(tmp_path / f"run{i}" / "lite.safetensors")) for i in range(2))
    assert all(torch.equal(first[k], second[k]) for k in first)
    # another seed draws other photo views into its own cache and leaves seed 0's in place
    train_lite(train, dev, tmp_path / "seed1", replace(config, epochs=1, seed=1), image_blocks=1, text_layers=1,
               views=2, dim=16, cache=tmp_path / "cache", progress=False)
    seeds = {json.loads((f / "meta.json").read_text())["seed"] for f in (tmp_path / "cache").glob("*-v2-s*")}
    assert seeds == {0, 1}


@needs_flickr
def test_tiny_lite_run_on_flickr8k_learns_and_exports(tmp_path: Path) -> None:
    from crossmodal.training.train_lite import train_lite

    train = load_dataset(FLICKR, "train").subset_images(np.arange(6000) < 48)
    dev = load_dataset(FLICKR, "dev").subset_images(np.arange(1000) < 24)
    config = TrainConfig(epochs=3, batch_size=16, patience=3, lr=1e-3, tower_lr=1e-4)
    out = tmp_path / "model"
    history = train_lite(train, dev, out, config, image_blocks=1, text_layers=1, views=2, dim=64,
                         cache=tmp_path / "cache", progress=False)
    heads_history = json.loads((out / "training" / "heads" / "training" / "history.json").read_text())["history"]
    assert heads_history[-1]["loss"] < heads_history[0]["loss"]
    assert history[-1]["loss"] < heads_history[0]["loss"]
    # chance RSUM on 24 photos is about 2 * (4 + 21 + 42) = 134
    assert max(h["dev_rsum"] for h in history) > 160

    state = load_file(str(out / "lite.safetensors"))
    assert any(k.startswith("towers.image._blocks.15.") for k in state)
    assert any(k.startswith("towers.text.encoder.layer.5.") for k in state)
    assert not any(k.startswith(("towers.image._blocks.14.", "towers.text.encoder.layer.4.")) for k in state)
    tuned, base = load_encoder(str(out)), load_encoder("lite")
    assert tuned.fingerprint != base.fingerprint and tuned.dim == 64
    photos = [load_image(p) for p in dev.images[:4]]
    tuned_texts = tuned.encode_texts(dev.texts[:4])
    assert np.allclose(np.linalg.norm(tuned_texts, axis=1), 1, atol=1e-5)
    assert tuned.encode_images(photos).shape == (4, 64)


def _tiny_table(root: Path) -> Path:
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40), (20, 20, 20), (240, 240, 240)]
    words = ["red", "green", "blue", "yellow", "black", "white"]
    rows = ["image\tcaption\tsplit"]
    for i, (colour, word) in enumerate(zip(colours * 2, words * 2, strict=True)):
        make_photo(root / f"p{i}.png", colour, noise=20 + i)
        split = "train" if i < 8 else "dev"
        rows += [f"p{i}.png\ta {word} photo\t{split}", f"p{i}.png\tall {word}\t{split}"]
    make_photo(root / "broken.jpg", (0, 0, 0)).write_bytes(b"not a jpeg")
    rows.append("broken.jpg\ta broken photo\ttrain")
    (root / "data.tsv").write_text("\n".join(rows) + "\n")
    return root / "data.tsv"


def _tiny_clip_folder(folder: Path) -> Path:
    """A tiny random CLIP saved with its tokenizer and processor, as a transformers folder."""
    from test_hf_encoders import _build, _tokenizer

    torch.manual_seed(0)
    model, processor = _build("clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def _train_tiny_clip(tmp_path: Path, unfreeze: str, tower_lr: str) -> tuple[list[str], str, Path, Encoder, Encoder]:
    """`crossmodal train` a tiny CLIP on the tiny table: the arguments, its output, the output folder, and the
    trained and original encoders."""
    base, table = _tiny_clip_folder(tmp_path / "base"), _tiny_table(tmp_path / "data")
    out = tmp_path / "tuned"
    args = ["train", "--model", str(base), "--data", str(table), "--out", str(out), "--unfreeze", unfreeze,
            "--epochs", "2", "--batch-size", "4", "--lr", "1e-2", "--tower-lr", tower_lr, "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return args, result.output, out, load_encoder(str(out)), load_encoder(str(base))


def test_train_command_fine_tunes_a_transformers_model(tmp_path: Path) -> None:
    _, output, out, tuned, original = _train_tiny_clip(tmp_path, "last:1", "1e-3")
    assert "skipping" in output and "broken.jpg" in output
    assert (out / "report" / "report.json").is_file() and (out / "training_curve.png").is_file()
    assert tuned.fingerprint != original.fingerprint
    a, b = tuned.model.state_dict(), original.model.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert "visual_projection.weight" in changed and "text_projection.weight" in changed
    assert any(k.startswith("vision_model.encoder.layers.1.") for k in changed)
    assert not any(k.startswith(("vision_model.encoder.layers.0.", "text_model.embeddings")) for k in changed)


def test_heads_only_needs_projection_heads(tmp_path: Path) -> None:
    from test_hf_encoders import _build

    from crossmodal.training.hf_task import unfreeze

    siglip, _ = _build("siglip")
    with pytest.raises(ValueError, match="no projection heads"):
        unfreeze(siglip, 0)
    assert unfreeze(siglip, 1)


@pytest.mark.parametrize("family", ["clip", "chinese_clip"])
def test_lora_adapters_merge_into_the_plain_model(family: str) -> None:
    from test_hf_encoders import _build

    from crossmodal.training.hf_task import add_lora, merged_copy

    torch.manual_seed(0)
    model, _ = _build(family)
    model.eval()
    trainable = add_lora(model, 4)
    assert any("text_model" in n and "lora_A" in n for n in trainable)
    assert any("vision_model" in n and "lora_B" in n for n in trainable)
    assert not any(n.startswith(("vision_model", "text_model")) and "lora_" not in n for n in trainable)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # zero at start: give the adapters an effect to merge
                param.normal_(0, 0.5)
    tokens = torch.tensor([[101, 2023, 2003, 1037, 3899, 102]])
    pixels = torch.randn(2, 3, *[model.config.vision_config.image_size] * 2)
    merged = merged_copy(model)
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        for get in (lambda m: m.get_text_features(input_ids=tokens),
                    lambda m: m.get_image_features(pixel_values=pixels)):
            adapted, plain = get(model), get(merged)
            adapted, plain = (getattr(x, "pooler_output", x) for x in (adapted, plain))
            assert torch.allclose(adapted, plain, atol=1e-4)
    assert any("lora" in k for k in model.state_dict())  # the training model keeps its adapters


def test_train_command_with_lora_exports_a_plain_transformers_folder(tmp_path: Path) -> None:
    args, _, _, tuned, original = _train_tiny_clip(tmp_path, "lora:4", "1e-2")
    a, b = tuned.model.state_dict(), original.model.state_dict()
    assert set(a) == set(b)
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert "visual_projection.weight" in changed and "text_projection.weight" in changed
    assert any(k.startswith("vision_model.") and k.endswith("q_proj.weight") for k in changed)
    assert any(k.startswith("text_model.") and k.endswith("v_proj.weight") for k in changed)
    assert not any(k.endswith(("k_proj.weight", "fc1.weight")) or "embeddings" in k for k in changed)
    for bad in ("lora:0", "lora:x"):
        result = CliRunner().invoke(app, [*args[:-3], "--unfreeze", bad, "-q"])
        assert result.exit_code != 0 and "lora:R" in result.output
