"""Smoothing before dynamic int8 (encoders/onnx_smooth.py): the float graph computes the same function, and its
int8 version loses far less to an input channel with outliers."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from crossmodal.encoders.onnx_export import quantize_text_tower
from crossmodal.encoders.onnx_smooth import smooth_activations

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
OUTLIER = 3  # the input channel that is 40x the others, as the feed-forward inputs of a transformer have


def _graph(path: Path) -> None:
    """x (n, 16) -> [x @ a -> relu -> @ b (32 -> 8)] and x @ c (16 -> 24): two products share the input x."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"a": rng.normal(size=(16, 32)), "b": rng.normal(size=(32, 8)), "c": rng.normal(size=(16, 24))}
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "b"], ["y"], name="down"),
             helper.make_node("MatMul", ["x", "c"], ["z"], name="side")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", d]) for o, d in (("y", 8), ("z", 24))],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _inputs(rows: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32)
    x[:, OUTLIER] *= 40
    return x


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y", "z"], {"x": x})


def test_smoothing_keeps_the_function_and_int8_keeps_more_of_it(tmp_path: Path) -> None:
    plain, smooth = tmp_path / "plain.onnx", tmp_path / "smooth.onnx"
    _graph(plain)
    _graph(smooth)
    assert smooth_activations(smooth, ({"x": _inputs(1, seed)} for seed in range(8))) == 2  # x (shared) and r
    model = onnx.load(str(smooth))
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    assert len(muls) == 2 and {n.input[0] for n in model.graph.node if n.name in ("up", "side")} == {"x/smoothed"}
    x = _inputs(64, seed=100)  # inputs calibration never saw
    expected = _run(plain, x)
    for got, want in zip(_run(smooth, x), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    quantize_text_tower(plain)
    quantize_text_tower(smooth)  # "down" (wider in than out) stays float32 in both: only x's products change
    errors = [np.abs(_run(p, x)[1] - expected[1]).mean() / np.abs(expected[1]).mean() for p in (plain, smooth)]
    assert errors[1] < errors[0] / 2, errors  # measured: 3.3x smaller


def test_smoothing_needs_a_calibration_input(tmp_path: Path) -> None:
    path = tmp_path / "g.onnx"
    _graph(path)
    with pytest.raises(ValueError, match="calibration"):
        smooth_activations(path, [])


def test_the_quantizers_advice_is_dropped_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """ONNX Runtime's quantizer logs advice on the root logger; quantizing hides it, not a warning another thread
    (a server's request) logs meanwhile, nor one logged after."""
    import onnxruntime.quantization as quantization

    real = quantization.quantize_dynamic

    def with_a_neighbour(*args: object, **kwargs: object) -> None:
        neighbour = threading.Thread(target=lambda: logging.warning("a request's own warning"))
        neighbour.start()
        neighbour.join()
        real(*args, **kwargs)

    monkeypatch.setattr(quantization, "quantize_dynamic", with_a_neighbour)
    _graph(tmp_path / "g.onnx")
    with caplog.at_level(logging.WARNING):
        quantize_text_tower(tmp_path / "g.onnx")
        logging.warning("after")
    assert [r.getMessage() for r in caplog.records] == ["a request's own warning", "after"]
    real(str(tmp_path / "g.onnx"), str(tmp_path / "q.onnx"))  # unfiltered, the advice is there
    assert any("pre-processing before quantization" in r.getMessage() for r in caplog.records)
