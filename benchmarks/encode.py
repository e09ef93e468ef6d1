"""Encoding speed and quality of the default model's backends, side by side in one process.

    python benchmarks/encode.py [--data ../shared/datasets/flickr8k] [--split dev]

Eager PyTorch float32 vs ONNX Runtime float32 vs ONNX Runtime int8 (dynamic quantization) for
`lite`, on the split's photos (decoded once, beforehand) and captions: photos/s, captions/s, the
process's resident memory after each backend ran, agreement with eager (minimum cosine) and the
split's RSUM, so the accuracy cost of int8 is measured, not guessed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from crossmodal.encoders import load_encoder
from crossmodal.encoders.onnx import OnnxEncoder, export_onnx
from crossmodal.evaluation.metrics import recall_metrics
from crossmodal.sources.datasets import load_flickr_layout
from crossmodal.sources.images import load_image


def rss_mb() -> float:
    """Resident memory of this process now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, items):
    fn(items[:8])  # warm-up
    start = time.perf_counter()
    out = fn(items)
    return out, len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/flickr8k"))
    parser.add_argument("--split", default="dev")
    args = parser.parse_args()
    data = load_flickr_layout(args.data, args.split)
    start = time.perf_counter()
    images = [load_image(p) for p in data.images]
    decode_rate = len(images) / (time.perf_counter() - start)
    eager = load_encoder("lite")
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("PyTorch eager fp32", lambda: eager),
                    ("ONNX Runtime fp32", lambda: OnnxEncoder(export_onnx(eager, Path(tmp) / "fp32"))),
                    ("ONNX Runtime int8", lambda: OnnxEncoder(export_onnx(eager, Path(tmp) / "int8", int8=True)))]
        for name, make in backends:
            encoder = make()
            image_vecs, photo_rate = timed(encoder.encode_images, images)
            text_vecs, caption_rate = timed(encoder.encode_texts, data.texts)
            if reference is None:
                reference = (image_vecs, text_vecs)
            agree = min(float((image_vecs * reference[0]).sum(1).min()),
                        float((text_vecs * reference[1]).sum(1).min()))
            rsum = recall_metrics(image_vecs, text_vecs, data.text_image)["rsum"]
            rows.append((name, photo_rate, caption_rate, rss_mb(), agree, rsum))
    table = Table(title=f"lite on Flickr8k {args.split}: {len(images)} photos, {len(data.texts)} captions; "
                        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
                        f"decode {decode_rate:.0f} photos/s")
    for col in ("backend", "photos/s", "x eager", "captions/s", "x eager", "RSS MB after", "min cosine vs eager",
                "RSUM", "RSUM change"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    base = rows[0]
    for name, photo_rate, caption_rate, rss, agree, rsum in rows:
        table.add_row(name, f"{photo_rate:.1f}", f"{photo_rate / base[1]:.2f}", f"{caption_rate:.0f}",
                      f"{caption_rate / base[2]:.2f}", f"{rss:.0f}", f"{agree:.4f}", f"{rsum:.1f}",
                      f"{rsum - base[5]:+.1f}")
    Console(width=180).print(table)


if __name__ == "__main__":
    main()
