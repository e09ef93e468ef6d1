"""Cross-encoder reranking of the dual encoder's top N (torch model in ``model``, ONNX runtime in ``runtime``)."""

from .runtime import Reranker, export_reranker_onnx

__all__ = ["Reranker", "export_reranker_onnx"]
