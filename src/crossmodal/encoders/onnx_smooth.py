"""SmoothQuant (Xiao et al., ICML 2023) for the int8 text towers: move activation outliers into the weights before
dynamic int8 quantization.

Dynamic int8 gives each matrix product's input one scale for the whole batch, set by its largest value. A
transformer's activations have a few outlier channels (multilingual-e5's feed-forward inputs reach 20-70 where the
median channel stays under 2), so every other channel gets a handful of levels: the tower's vectors lost fidelity
and changed with the other queries in a batch. Here each such input is divided per channel by ``s`` (a ``Mul``
before the product) and the weight's rows multiplied by it, ``s = max|x|^alpha / max|w|^(1 - alpha)``: the float
graph computes the same function, and the int8 one sees flatter inputs. ``alpha`` and the effect were measured on
Multi30K dev (docs/benchmarks.md).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

ALPHA = 0.75  # chosen on Multi30K dev among 0.5, 0.6, 0.75, 0.9

# What the export reads to find each input's channel ranges: short photo captions in several languages (written for
# this; the outlier channels are properties of the model, so a few dozen sentences find them as well as hundreds of
# dataset captions do: docs/benchmarks.md).
CALIBRATION = (
    "A dog runs through the grass with a stick in its mouth.",
    "Two children are playing on a sandy beach near the water.",
    "A man in a red jacket climbs a steep rock wall.",
    "a woman riding a bicycle down a busy city street",
    "A group of people stand outside a small cafe at night.",
    "black and white cat sleeping on a sofa",
    "A little girl in a pink dress is jumping into a swimming pool.",
    "Snow covered mountains under a clear blue sky",
    "Ein Hund rennt mit einem Ball über die Wiese.",
    "Zwei Männer sitzen auf einer Bank im Park und lesen Zeitung.",
    "Eine Frau mit Hut fotografiert einen Sonnenuntergang am Meer.",
    "Kinder spielen Fußball auf einem staubigen Platz.",
    "Un chien noir saute par-dessus une barrière en bois.",
    "Une femme en robe bleue marche sous la pluie avec un parapluie.",
    "Des enfants construisent un château de sable sur la plage.",
    "Un homme fait du vélo sur une route de montagne.",
    "Pes běží po pláži a nese v tlamě klacek.",
    "Dvě děti sedí na lavičce a jedí zmrzlinu.",
    "Muž v modré bundě leze na skálu.",
    "Žena jede na kole po rušné ulici.",
    "Un perro marrón corre por la nieve.",
    "Una niña con un vestido rojo juega en el parque.",
    "Un ragazzo salta da un trampolino in piscina.",
    "Um homem surfa uma onda grande no oceano.",
    "Een vrouw loopt met haar hond langs het strand.",
    "Dziewczynka w różowej sukience biegnie po trawie.",
    "Собака бежит по снегу за мячом.",
    "一只狗在草地上奔跑。",
    "海辺で子供たちが遊んでいる。",
    "Bir kedi pencerenin önünde uyuyor.",
    "Ένας άντρας κάνει ποδήλατο στο βουνό.",
    "कुत्ता घास में दौड़ रहा है।",
)


def smooth_activations(path: Path, feeds: Iterable[dict[str, np.ndarray]], alpha: float = ALPHA) -> int:
    """Smooth, in place, the inputs of the float graph's matrix products (``MatMul`` and fused ``Attention`` with a
    constant weight) from their channel ranges over ``feeds`` (one unpadded text each); returns how many inputs.
    Products that read one input share its scale."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {t.name: t for t in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    readers: dict[str, list] = defaultdict(list)
    for node in model.graph.node:  # a weight another node reads too (tied) would be scaled twice: left as is
        if node.op_type in ("MatMul", "Attention") and len(node.input) > 1 and node.input[1] in weights \
                and len(weights[node.input[1]].dims) == 2 and uses[node.input[1]] == 1:
            readers[node.input[0]].append(node)
    ranges = _channel_ranges(model, list(readers), feeds)
    for name, nodes in readers.items():
        rows = np.max([np.abs(numpy_helper.to_array(weights[n.input[1]])).max(1) for n in nodes], axis=0)
        scale = np.maximum(ranges[name], 1e-5) ** alpha / np.maximum(rows, 1e-5) ** (1 - alpha)
        scale = np.where((ranges[name] > 0) & (rows > 0), scale, 1.0).astype(np.float32)
        for node in nodes:
            weight = weights[node.input[1]]
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * scale[:, None], weight.name))
        # names of their own: the quantizer names its tensors "<input>_scale", "<input>_quantized", ...
        divided, divisor = f"{name}/smoothed", f"{name}/smoothing_divisor"
        model.graph.initializer.append(numpy_helper.from_array(1 / scale, divisor))
        first = min(list(model.graph.node).index(n) for n in nodes)
        model.graph.node.insert(first, onnx.helper.make_node("Mul", [name, divisor], [divided], name=divided))
        for node in nodes:
            node.input[0] = divided
    onnx.save(model, str(path))
    return len(readers)


def _channel_ranges(model: Any, names: list[str], feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """max |x| per channel (the last axis) of each tensor in ``names`` over ``feeds``, from the float graph."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ranges: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            seen = np.abs(value).reshape(-1, value.shape[-1]).max(0)
            ranges[name] = np.maximum(ranges[name], seen) if name in ranges else seen
    if not ranges:
        raise ValueError("smoothing needs at least one calibration input")
    return ranges
