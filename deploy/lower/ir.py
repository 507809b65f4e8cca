"""The integer IR: the single contract between Python and everything downstream.

A model is a list of tensors and a list of integer ops in execution order. Arithmetic follows
TFLite's int8 reference kernels exactly (so int8/int4 models can be compared bit for bit with
TFLite Micro):

* Activations are int8 tensors with (scale, zero_point) and a clamp range [qmin, qmax] that
  enforces their bit width a_bits inside the int8 container (unsigned a-bit after ReLU:
  zero_point = -128, qmax = -128 + 2^a - 1; signed a-bit: zero_point = 0, |q| ≤ 2^(a-1)).
* Weights are integer codes (held as int8 numpy arrays) at the layer's own w_bits, symmetric,
  per output channel, zero point 0: codes in [-(2^(b-1)-1), 2^(b-1)-1] for b ≥ 2, {-1, +1} for b = 1.
  Layouts are TFLite's: conv2d OHWI, depthwise conv2d 1HWC (channel multiplier 1), fully connected OI.
* Biases are int32 with scale input_scale · w_scale[c].
* Requantisation is per output channel: a Q31 multiplier and a shift, applied with TFLite's
  MultiplyByQuantizedMultiplier (SaturatingRoundingDoublingHighMul + RoundingDivideByPOT).
* ADD follows TFLite's int8 ADD (left shift 20, three multiplier/shift pairs); AVG_POOL divides with
  rounding half away from zero; REQUANTIZE is TFLite's int8→int8 QUANTIZE.

Saved as ``model.ir.json`` (graph, attributes, scalars) + ``model.ir.npz`` (arrays).

Conventions fixed by the first lowering (deploy/lower/lower.py, deploy/lower/irbuild.py; field names unchanged):

* Rounding is TFLite's default double rounding (SaturatingRoundingDoublingHighMul, then
  RoundingDivideByPOT) for every op, FULLY_CONNECTED included — checked bit for bit against
  TFLite Micro (PyPI) and LiteRT's reference kernels. Multipliers/shifts are derived from the float32
  scales exactly as TFLite's Prepare does (deploy/lower/fixedpoint.py: conv_multiplier, add_params,
  requantize_multiplier), so an exporter may equally recompute them from the scales.
* The model input tensor holds raw pixels as int8 codes pixel − 128 (scale 1/255, zero point −128).
  The dataset normalisation is the first op: a 1×1 depthwise_conv2d named ``normalise``.
* requantize also has act_min, act_max (the clamp of its output's a-bit range).
* Scalar attributes: ints everywhere (padding/stride/kernel as lists); arrays keyed "<op name>.<key>".
  Several ops may name the SAME arrays (instances of one layer, sharing weights/bias/w_scale with
  their own multiplier/shift); exporters store a shared array once. The lowering emits every layer
  once since IR version 2.
* graph.meta: ``name``, ``mean``, ``std`` (normalisation). The arena is planned by the runtime's
  exporter (deploy/export/smpq.py, search/planner.py's ``plan_arena``), not stored in the IR.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firmware_harness.format_spec import OP_KINDS as FORMAT_OP_KINDS

IR_VERSION = 2  # 2: the lowering runs every node once (a value read at several grids is requantised, not
                # recomputed; exports of residual models change) and the IR no longer stores an arena plan
OP_KINDS = tuple(FORMAT_OP_KINDS)  # the IR runs exactly the ops the .smpq format encodes


class IRError(Exception):
    """A malformed or inconsistent IR (one-line message)."""


@dataclass
class TensorSpec:
    """An int8 activation tensor (NHWC, batch 1) with its quantisation and bit-width clamp."""

    name: str
    shape: list[int]
    scale: float
    zero_point: int
    bits: int = 8
    qmin: int = -128
    qmax: int = 127


@dataclass
class Op:
    """One integer op. `inputs`/`outputs` index `Graph.tensors`; `arrays` name entries in the npz.

    attrs by kind:
      conv2d / depthwise_conv2d: stride [sh, sw], padding [top, left, bottom, right], w_bits,
                                 act_min, act_max (int8 clamp of the output)
      fully_connected:           w_bits, act_min, act_max
      add:                       left_shift, in1_multiplier, in1_shift, in2_multiplier, in2_shift,
                                 out_multiplier, out_shift, act_min, act_max
      avg_pool / max_pool:       kernel [kh, kw], stride [sh, sw], padding [t, l, b, r], act_min, act_max
      reshape:                   (none; output shape is the output tensor's)
      requantize:                multiplier, shift (int8→int8, TFLite QUANTIZE), act_min, act_max
      softmax:                   input_multiplier, input_left_shift, diff_min (TFLite int8 SOFTMAX along the
                                 last axis; output scale 1/256, zero point −128; deploy/lower/softmax_int8.py)
    arrays by kind (conv2d, depthwise_conv2d, fully_connected): weights (int8 codes), bias (int32),
      multiplier (int32 per channel), shift (int32 per channel), w_scale (float32 per channel).
    """

    kind: str
    name: str
    inputs: list[int]
    outputs: list[int]
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, str] = field(default_factory=dict)


@dataclass
class Graph:
    """A whole integer model: tensors, ops in execution order, constant arrays and metadata."""

    tensors: list[TensorSpec]
    ops: list[Op]
    inputs: list[int]
    outputs: list[int]
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def const(self, op: Op, key: str) -> np.ndarray:
        return self.consts[op.arrays[key]]

    def save(self, stem: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.ir.json`` and ``<stem>.ir.npz``; returns both paths."""
        stem = Path(stem)
        jpath, npath = stem.with_name(stem.name + ".ir.json"), stem.with_name(stem.name + ".ir.npz")
        doc = {
            "ir_version": IR_VERSION,
            "tensors": [asdict(t) for t in self.tensors],
            "ops": [asdict(o) for o in self.ops],
            "inputs": self.inputs,
            "outputs": self.outputs,
            "meta": self.meta,
        }
        from search.atomic import atomic_path, atomic_write_text

        with atomic_path(npath) as tmp:  # the arrays first: a json beside them is the mark of a complete save
            with open(tmp, "wb") as fh:
                np.savez(fh, **self.consts)
        atomic_write_text(jpath, json.dumps(doc, indent=1))
        return jpath, npath

    @classmethod
    def load(cls, stem: str | Path) -> "Graph":
        """Read a graph written by :meth:`save` (pass the stem, e.g. ``runs/x/model``)."""
        stem = Path(stem)
        jpath, npath = stem.with_name(stem.name + ".ir.json"), stem.with_name(stem.name + ".ir.npz")
        try:
            doc = json.loads(jpath.read_text())
            with np.load(npath) as z:
                consts = {k: z[k] for k in z.files}
        except FileNotFoundError as e:
            raise IRError(f"IR file missing: {e.filename} (run 'smpq-deploy export' first)") from None
        except (json.JSONDecodeError, ValueError, OSError) as e:
            raise IRError(f"IR at '{stem}' is unreadable ({e}); re-run the export") from None
        if doc.get("ir_version") != IR_VERSION:
            raise IRError(f"IR version {doc.get('ir_version')} at '{jpath}' is not supported (expected {IR_VERSION}); re-run the export")
        g = cls([TensorSpec(**t) for t in doc["tensors"]], [Op(**o) for o in doc["ops"]],
                doc["inputs"], doc["outputs"], consts, doc.get("meta", {}))
        return g
