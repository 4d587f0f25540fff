"""FLOPs of an ONNX model read from its graph (torch-free): 2 per multiply-add of every convolution and matrix
product, with shapes from ONNX shape inference. The same count for a float model and its QDQ-quantised twin (the
Conv nodes are the same; DequantizeLinear only feeds them), and smaller for a channel-pruned one, so the zoo's FLOPs
column compares every entry on one footing."""

from __future__ import annotations

import math
from pathlib import Path

from sensors.errors import DeployError

COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def onnx_flops(onnx_path: str | Path) -> int:
    """FLOPs of one forward pass of the ONNX file at its declared (static) input shapes. DeployError when a counted
    node's shapes cannot be inferred (dynamic dimensions left in the graph)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)), data_prop=True)
    graph = model.graph
    shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in graph.initializer}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)

    def shape(name: str, node) -> tuple[int, ...]:
        if name not in shapes:
            raise DeployError(f"{onnx_path}: no static shape for {name!r} ({node.op_type} node {node.name!r}); "
                              "FLOPs need a graph with fixed input shapes (export at batch 1)")
        return shapes[name]

    total = 0
    for node in graph.node:
        if node.op_type not in COUNTED:
            continue
        out = shape(node.output[0], node)
        if node.op_type == "Conv":  # out (N, Cout, *spatial); weight (Cout, Cin/group, *kernel)
            weight = shape(node.input[1], node)
            total += 2 * math.prod(out) * math.prod(weight[1:])
        elif node.op_type == "ConvTranspose":  # every input element meets Cout/group * kernel weights
            x, weight = shape(node.input[0], node), shape(node.input[1], node)
            total += 2 * math.prod(x) * math.prod(weight[1:])
        else:  # MatMul / Gemm: out (..., M, N) with a shared dimension K
            a = shape(node.input[0], node)
            trans_a = any(a_.name == "transA" and a_.i for a_ in node.attribute)
            k = a[-2] if trans_a else a[-1]
            total += 2 * math.prod(out) * k
    return int(total)


__all__ = ["COUNTED", "onnx_flops"]
