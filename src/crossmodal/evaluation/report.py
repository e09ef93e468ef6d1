"""Evaluation reports: report.json (everything), report.md (for people), recall curves as PNG,
and the comparison of two reports."""

from __future__ import annotations

import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..collection.atomic import atomic_write, atomic_write_json

MAIN_METRICS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "rsum", "i2t_mAP@R",
                "t2i_mAP@R")


def finish_report(report: dict[str, Any], split: str, command: list[str] | None = None) -> dict[str, Any]:
    """Add what makes a run reproducible: version, command, split, time, platform."""
    return {
        **report,
        "split": split,
        "crossmodal_version": __version__,
        "command": shlex.join(command if command is not None else sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
    }


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write report.json, report.md and recall_curves.png into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    md = render_markdown(report)
    atomic_write(out / "report.md", lambda f: f.write(md.encode()))
    plot_curves(report, out / "recall_curves.png")
    return [out / "report.json", out / "report.md", out / "recall_curves.png"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    ds, model = report["dataset"], report["model"]
    lines = [
        f"# Retrieval evaluation: {model['name']} on {ds['name']}",
        "",
        f"{ds['images']} photos, {ds['texts']} captions; crossmodal {report.get('crossmodal_version', '?')}; "
        f"{report['wall_seconds']:.1f} s.",
        "",
        "| direction | R@1 | R@5 | R@10 | mAP@R | R-Precision | MedR | MeanR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, label in (("i2t", "image->text"), ("t2i", "text->image")):
        lines.append(f"| {label} | " + " | ".join(_fmt(m[f"{d}_{k}"]) for k in
                                                  ("R@1", "R@5", "R@10", "mAP@R", "R-Precision", "medr", "meanr"))
                     + " |")
    lines += ["", f"**RSUM {m['rsum']:.2f}**"]
    extra = {k: v for k, v in m.items() if "fold" in k or k == "mrv"}
    if extra:
        lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in extra.items()]
    if "mrv" in m:
        lines += ["", f"MRV: {report['protocol']['mrv']}."]
    if report.get("by_lang"):
        lines += ["", "| language | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | RSUM |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {lang} | " + " | ".join(_fmt(x[f"{d}_R@{k}"]) for d in ("i2t", "t2i") for k in (1, 5, 10))
                  + f" | {_fmt(x['rsum'])} |" for lang, x in report["by_lang"].items()]
    pipe = report.get("pipeline")
    if pipe:
        stages = ", ".join(f"{stage} {ms:.2f} ms" for stage, ms in pipe["stage_ms_per_query"].items())
        norm = f"bank {pipe['bank']}" if pipe["bank"] else "off"
        lines += ["", f"Ranking (the search pipeline): normalisation {norm}, "
                      f"reranker {pipe['reranker'] or 'none'} on the top {pipe['rerank']}, min score "
                      f"{pipe['min_score']}; per query: {stages}."]
    tp = report["throughput"]
    lines += ["", f"Encoding: {_fmt(tp['images_per_second'])} photos/s, {_fmt(tp['texts_per_second'])} captions/s.",
              "", f"Ties: {report['protocol']['ties']}.", "", "## Worst text->image queries", "",
              "| rank | caption | photo | retrieved instead |", "|---|---|---|---|"]
    for w in report["worst"]["t2i"]:
        lines.append(f"| {w['rank']} | {w['caption']} | {Path(w['image']).name} | "
                     f"{', '.join(Path(r).name for r in w['retrieved'])} |")
    lines += ["", "## Worst image->text queries", "", "| rank | photo | a true caption | retrieved instead |",
              "|---|---|---|---|"]
    for w in report["worst"]["i2t"]:
        lines.append(f"| {w['rank']} | {Path(w['image']).name} | {w['captions'][0] if w['captions'] else ''} | "
                     f"{w['retrieved'][0]} |")
    if report.get("command"):
        lines += ["", "Command:", "", f"    {report['command']}"]
    return "\n".join(lines) + "\n"


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Recall@K for K = 1..50 in both directions, on a log K axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for d, label in (("i2t", "image → text"), ("t2i", "text → image")):
        curve = report["curves"][d]
        ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=2.5, label=label)
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 10, 20, 50], labels=["1", "2", "5", "10", "20", "50"])
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{report['model']['name']} on {report['dataset']['name']} (RSUM {report['metrics']['rsum']:.1f})",
                 fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(metric, a, b, b - a) for every metric both reports have, main metrics first."""
    keys = [k for k in MAIN_METRICS if k in a["metrics"] and k in b["metrics"]]
    keys += sorted(k for k in a["metrics"] if k in b["metrics"] and k not in keys)
    return [(k, a["metrics"][k], b["metrics"][k], b["metrics"][k] - a["metrics"][k]) for k in keys]


def load_report(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report.json here")
    return json.loads(path.read_text())
