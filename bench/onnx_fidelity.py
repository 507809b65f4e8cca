"""ONNX Runtime vs the integer reference, both ONNX styles, on a run's IR (figures only, never pass/fail).

    .venv/bin/python bench/onnx_fidelity.py --run runs/demo [--samples 1000] [--repeats 5] [--per-tensor]

Prints, for the QDQ style (model.onnx) and the integer style (model.int.onnx) built from the run's
``model.ir.json`` at the same opset: top-1 agreement with the reference, the share of output codes that
are equal / within 1 LSB, the largest difference, and the median (over --repeats) time per image in
ONNX Runtime (one thread; both styles timed in every round, so load changes hit them alike). With
--per-tensor, it also shows where the QDQ graph departs from the reference: for every IR tensor, the
share of codes equal / within 1 LSB when the whole graph runs in float QDQ (differences accumulate).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.lower import reference  # noqa: E402
from deploy.export.onnx import DEFAULT_OPSET, STYLES, to_onnx  # noqa: E402
from deploy.lower.ir import Graph  # noqa: E402
from search.nn.data import load_dataset  # noqa: E402


def _session(model):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _per_tensor(g: Graph, x: np.ndarray, opset: int) -> None:
    """Every IR tensor's codes in the QDQ graph (its last int8 node) vs the reference's."""
    from onnx import TensorProto, helper

    model = to_onnx(g, opset, "qdq")
    produced = {n.output[0] for n in model.graph.node}
    names = {}
    for i, t in enumerate(g.tensors):
        for suffix in (".clip", ".q"):
            if t.name + suffix in produced:
                names[i] = t.name + suffix
                break
    for name in names.values():
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT8, None))
    got = dict(zip(names.values(), _session(model).run(list(names.values()), {"input": x})))
    vals = reference.run(g, x, keep=True)
    print(f"\n{'op':34s} {'kind':17s} {'w':>2s} {'act range':>11s} {'equal':>7s} {'±1 LSB':>7s} {'max':>4s}")
    for op in g.ops:
        idx = op.outputs[0]
        if idx not in names:
            continue
        codes = got[names[idx]]
        codes = codes.transpose(0, 2, 3, 1) if codes.ndim == 4 else codes
        d = np.abs(codes.astype(np.int64) - vals[idx])
        rng = f"[{op.attrs.get('act_min', -128)},{op.attrs.get('act_max', 127)}]"
        print(f"{op.name:34s} {op.kind:17s} {op.attrs.get('w_bits', '-')!s:>2s} {rng:>11s} "
              f"{(d == 0).mean():7.4f} {(d <= 1).mean():7.4f} {d.max():4d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo", help="run folder with model.ir.json/.npz (after export)")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--samples", type=int, default=1000, help="test images (evenly spread over the split)")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (median)")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    ap.add_argument("--per-tensor", action="store_true", help="QDQ agreement per IR tensor")
    args = ap.parse_args()

    g = Graph.load(Path(args.run) / "model")
    test = load_dataset(args.dataset, args.data_dir).test.subset(args.samples)
    x = reference.to_int8_input(test.x)
    ref = reference.run(g, x).astype(np.int64)
    sessions = {style: _session(to_onnx(g, args.opset, style)) for style in STYLES}
    outputs, times = {}, {style: [] for style in STYLES}
    for _ in range(args.repeats):
        for style, sess in sessions.items():
            t0 = time.perf_counter()
            outputs[style] = sess.run(["output"], {"input": x})[0].astype(np.int64)
            times[style].append((time.perf_counter() - t0) / len(x))
    print(f"{args.run}: {len(x)} test images, opset {args.opset}, reference accuracy "
          f"{(ref.reshape(len(x), -1).argmax(1) == test.y).mean():.4f}")
    print(f"{'style':8s} {'top-1 agree':>11s} {'equal':>7s} {'±1 LSB':>7s} {'max':>4s} {'accuracy':>8s} {'ms/image':>9s}")
    for style in STYLES:
        out = outputs[style]
        d = np.abs(out - ref)
        top1 = out.reshape(len(x), -1).argmax(1)
        print(f"{style:8s} {(top1 == ref.reshape(len(x), -1).argmax(1)).mean():11.4f} {(d == 0).mean():7.4f} "
              f"{(d <= 1).mean():7.4f} {d.max():4d} {(top1 == test.y).mean():8.4f} "
              f"{1e3 * statistics.median(times[style]):9.3f}")
    if args.per_tensor:
        _per_tensor(g, x, args.opset)


if __name__ == "__main__":
    main()
