"""The execution graph of a torch model, extracted automatically with torch.fx.

:func:`extract_graph` traces the model (``torch.fx`` symbolic tracing; Conv2d/Linear/BatchNorm/
activation/pool modules and their subclasses are kept as leaves), propagates shapes with a dummy
input of the model's input shape, and returns an :class:`ExecGraph`: nodes in execution order with
their op type, module name, tensor shapes, MACs and parameters, plus every activation tensor with
its lifetime (first producer step, last consumer step) — the input of the memory planner.

Op types: ``conv2d``, ``depthwise_conv2d`` (groups == in_channels), ``fully_connected``, ``add``,
``pool`` (avg / max / adaptive avg / spatial mean) — the ops the device runs — and the zero-cost ops
``bn``, ``relu``, ``relu6`` (folded into the producing layer on deploy), ``identity`` (Identity,
Dropout, contiguous) and ``flatten`` / ``reshape`` (no data movement). A zero-cost op works in place:
its output is the same tensor as its input (so it extends that tensor's lifetime), except a
bn/relu/relu6 whose input is also read by another op, which gets a tensor of its own.

Parameters are counted as the torch module has them (weights + bias if present). On deploy,
BatchNorm is folded, so every quantizable layer gets an int32 bias per output channel whether or
not the torch module has one; the deployment's cost model (``deploy/devices/cost.py``) accounts for that.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from search.budget import OP_TYPES, QUANTIZABLE
from search.errors import SearchError

COMPUTE = OP_TYPES  # ops with a cost: the quantizable layers, add and pool
ZERO_COST = ("bn", "relu", "relu6", "identity", "flatten", "reshape")
MODIFYING = ("bn", "relu", "relu6")  # zero-cost ops that change values (in place only if sole reader)

_LEAF_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity,
               nn.Dropout, nn.Flatten, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)


@dataclass(frozen=True)
class Node:
    """One op in execution order. Shapes exclude the batch dimension (C, H, W) or (N,)."""

    index: int
    name: str                      # module qualified name (call_module) or the fx node name
    op_type: str                   # see module docstring
    module: str | None             # qualified module name, None for functional ops
    inputs: tuple[int, ...]        # tensor ids read
    output: int                    # tensor id written (== inputs[0] for an in-place zero-cost op)
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    macs: int = 0
    weight_params: int = 0
    bias_params: int = 0
    out_channels: int = 0
    attrs: dict[str, Any] = field(default_factory=dict)
    fx_name: str = ""              # the torch.fx node it was traced from

    @property
    def params(self) -> int:
        """Weights + bias as the torch module has them."""
        return self.weight_params + self.bias_params

    @property
    def quantizable(self) -> bool:
        return self.op_type in QUANTIZABLE

    @property
    def in_place(self) -> bool:
        return bool(self.inputs) and self.output == self.inputs[0] and self.op_type in ZERO_COST


@dataclass(frozen=True)
class LiveTensor:
    """A tensor with a shape (no batch) and an inclusive lifetime [first_use, last_use] in op steps.

    The base of the graph's :class:`TensorInfo` and the device's ``deploy.devices.cost.RuntimeTensor``.
    """

    id: int
    shape: tuple[int, ...]
    first_use: int
    last_use: int

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class TensorInfo(LiveTensor):
    """An activation tensor of the graph: its producer step (-1: graph input) and consumer steps."""

    producer: int
    consumers: tuple[int, ...]


@dataclass(frozen=True)
class ExecGraph:
    """Nodes in execution order and the activation tensors they read and write."""

    nodes: tuple[Node, ...]
    tensors: tuple[TensorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    input_shape: tuple[int, ...]

    def layers(self) -> list[Node]:
        """The quantizable nodes (conv2d, depthwise_conv2d, fully_connected) in execution order."""
        return [n for n in self.nodes if n.quantizable]

    def layer_names(self) -> list[str]:
        return [n.name for n in self.layers()]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise SearchError(f"the model has no layer '{name}'; layers: {', '.join(self.layer_names())}")

    @property
    def macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    @property
    def params(self) -> int:
        return sum(n.params for n in self.nodes)


class _Tracer(fx.Tracer):
    """Keeps the supported layer types (and their subclasses, e.g. quantized wrappers) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAF_TYPES) or super().is_leaf_module(m, qualname)


def _spatial_mean_dims(args: tuple, kwargs: dict) -> bool:
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    return sorted(d % 4 for d in dims) == [2, 3]


def _classify_module(m: nn.Module, name: str) -> tuple[str, dict[str, Any]]:
    if isinstance(m, nn.Conv2d):
        attrs = {"kernel": tuple(m.kernel_size), "stride": tuple(m.stride), "padding": m.padding,
                 "dilation": tuple(m.dilation), "groups": m.groups, "in_channels": m.in_channels}
        if m.groups == 1:
            return "conv2d", attrs
        if m.groups == m.in_channels:
            return "depthwise_conv2d", attrs
        raise SearchError(f"layer '{name}' is a grouped convolution (groups={m.groups}, in_channels={m.in_channels}); "
                          f"only groups=1 or depthwise (groups == in_channels) are supported")
    if isinstance(m, nn.Linear):
        return "fully_connected", {"in_features": m.in_features}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "bn", {}
    if isinstance(m, nn.ReLU6):
        return "relu6", {}
    if isinstance(m, nn.ReLU):
        return "relu", {}
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return "identity", {}
    if isinstance(m, nn.Flatten):
        return "flatten", {}
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return "pool", {"kind": "adaptive_avg"}
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
        return "pool", {"kind": "avg" if isinstance(m, nn.AvgPool2d) else "max",
                        "kernel": m.kernel_size, "stride": m.stride, "padding": m.padding}
    raise SearchError(f"module '{name}' of type {type(m).__name__} is not supported by the execution graph "
                      f"(supported: Conv2d, Linear, BatchNorm, ReLU, ReLU6, pooling, Flatten, Identity, Dropout, add)")


_FUNCTIONS: dict[Any, str] = {
    operator.add: "add", torch.add: "add", operator.iadd: "add",
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6",
    torch.flatten: "flatten", torch.reshape: "reshape",
    F.adaptive_avg_pool2d: "pool", F.avg_pool2d: "pool", F.max_pool2d: "pool",
    F.dropout: "identity",
}
_METHODS = {"add": "add", "relu": "relu", "flatten": "flatten", "view": "reshape", "reshape": "reshape",
            "contiguous": "identity", "mean": "pool"}


def _classify_call(node: fx.Node) -> tuple[str, dict[str, Any]]:
    if node.op == "call_function":
        if node.target is F.hardtanh and tuple(node.args[1:3]) == (0.0, 6.0):
            return "relu6", {}
        if node.target is torch.mean:
            if _spatial_mean_dims(node.args, node.kwargs):
                return "pool", {"kind": "mean"}
        elif node.target in _FUNCTIONS:
            kind = _FUNCTIONS[node.target]
            attrs = {"kind": {F.max_pool2d: "max", F.avg_pool2d: "avg"}.get(node.target, "adaptive_avg")} if kind == "pool" else {}
            return kind, attrs
        what = getattr(node.target, "__name__", str(node.target))
    else:  # call_method
        kind = _METHODS.get(str(node.target))
        if kind == "pool" and not _spatial_mean_dims(node.args, node.kwargs):
            kind = None
        if kind:
            return kind, ({"kind": "mean"} if kind == "pool" else {})
        what = f"Tensor.{node.target}"
    raise SearchError(f"operation '{what}' (graph node '{node.name}') is not supported by the execution graph; "
                      f"supported: add, relu, relu6, flatten/reshape/view, pooling, spatial mean")


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(d) for d in meta.shape[1:])


def fx_trace(model: nn.Module) -> fx.Graph:
    """The project's one torch.fx trace of `model` (layers, BN, activations, pools as leaves); one-line SearchError."""
    try:
        return _Tracer().trace(model)
    except SearchError:
        raise
    except Exception as e:  # noqa: BLE001 - fx raises many types; report one line
        raise SearchError(f"torch.fx cannot trace {type(model).__name__}: {str(e).splitlines()[0]} "
                          f"(the model's forward must not branch on tensor values)") from None


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> fx.GraphModule:
    gm = fx.GraphModule(model, fx_trace(model))
    flags = {m: m.training for m in model.modules()}
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    except SearchError:
        raise
    except Exception as e:  # noqa: BLE001
        raise SearchError(f"running {type(model).__name__} on an input of shape {tuple(input_shape)} failed: "
                          f"{str(e).splitlines()[0]} (check the input shape)") from None
    finally:
        for m, t in flags.items():
            m.train(t)
    return gm


def extract_graph(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> ExecGraph:
    """Trace `model` for inputs of shape (C, H, W) (default: ``model.input_shape``) into an ExecGraph."""
    return trace_graph(model, input_shape)[1]


def trace_graph(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> tuple[fx.GraphModule, ExecGraph]:
    """:func:`extract_graph` plus the traced module whose fx nodes the graph's nodes name (``Node.fx_name``),
    for callers that run the model node by node (calibration of the lowering)."""
    shape = tuple(input_shape or getattr(model, "input_shape", None) or ())
    if not shape:
        raise SearchError(f"extract_graph needs the input shape of {type(model).__name__} (pass input_shape=(C, H, W))")
    gm = _trace(model, shape)
    modules = dict(gm.named_modules())

    tensor_of: dict[fx.Node, int] = {}
    shapes: list[tuple[int, ...]] = []
    producers: list[int] = []
    nodes: list[Node] = []
    inputs: list[int] = []
    outputs: list[int] = []
    seen_layers: set[str] = set()
    name_count: dict[str, int] = {}

    def new_tensor(s: tuple[int, ...], producer: int) -> int:
        shapes.append(s)
        producers.append(producer)
        return len(shapes) - 1

    for fn in gm.graph.nodes:
        if fn.op == "placeholder":
            s = _shape(fn)
            if s is None:
                raise SearchError(f"model input '{fn.name}' is not a tensor")
            tensor_of[fn] = new_tensor(s, -1)
            inputs.append(tensor_of[fn])
            continue
        if fn.op == "output":
            outs = fn.args[0] if isinstance(fn.args[0], (tuple, list)) else (fn.args[0],)
            outputs.extend(tensor_of[a] for a in outs if isinstance(a, fx.Node) and a in tensor_of)
            continue
        if fn.op == "get_attr":
            raise SearchError(f"the model reads tensor attribute '{fn.target}' inside forward; only module calls "
                              f"and supported functions can be lowered")
        out_shape = _shape(fn)
        if out_shape is None:  # a shape computation (x.size(0) ...): not an op on the device
            continue
        tensor_args = [a for a in fn.all_input_nodes if a in tensor_of]
        if fn.op == "call_module":
            module = str(fn.target)
            op_type, attrs = _classify_module(modules[module], module)
        else:
            module = None
            op_type, attrs = _classify_call(fn)
        if op_type == "add" and len(tensor_args) != 2:
            raise SearchError(f"add node '{fn.name}' must add two tensors (adding a constant is not supported)")
        if not tensor_args:
            raise SearchError(f"graph node '{fn.name}' reads no tensor")
        base = module or fn.name
        name_count[base] = name_count.get(base, 0) + 1
        name = base if name_count[base] == 1 else f"{base}:{name_count[base] - 1}"
        index = len(nodes)
        in_ids = tuple(tensor_of[a] for a in tensor_args)
        in_shapes = tuple(shapes[t] for t in in_ids)

        macs = weight = bias = out_ch = 0
        if op_type in QUANTIZABLE:
            if module in seen_layers:
                raise SearchError(f"layer '{module}' is called more than once in forward; give each call its own module")
            seen_layers.add(module)
            m = modules[module]
            weight = int(m.weight.numel())
            bias = int(m.bias.numel()) if getattr(m, "bias", None) is not None else 0
            out_numel = math.prod(out_shape)
            if op_type == "fully_connected":
                out_ch = m.out_features
                macs = out_numel * m.in_features
            else:
                out_ch = m.out_channels
                macs = out_numel * (m.in_channels // m.groups) * math.prod(m.kernel_size)

        sole_reader = len(tensor_args[0].users) == 1
        in_place = (op_type in ZERO_COST and (op_type not in MODIFYING or sole_reader)
                    and math.prod(out_shape) == math.prod(in_shapes[0]))
        out_id = in_ids[0] if in_place else new_tensor(out_shape, index)
        if in_place and op_type in ("flatten", "reshape"):
            shapes[out_id] = out_shape  # a view: same bytes, the consumers' shape
        tensor_of[fn] = out_id
        nodes.append(Node(index, name, op_type, module, in_ids, out_id, in_shapes, out_shape,
                          macs, weight, bias, out_ch, attrs, fn.name))

    if not nodes:
        raise SearchError(f"{type(model).__name__} has no operations to run")
    return gm, ExecGraph(tuple(nodes), _lifetimes(nodes, shapes, producers, outputs), tuple(inputs), tuple(outputs),
                         shape)


def _lifetimes(nodes: list[Node], shapes: list[tuple[int, ...]], producers: list[int],
               outputs: list[int]) -> tuple[TensorInfo, ...]:
    """Lifetime of every tensor: from its producer step (0 for graph inputs) to its last reader."""
    last = len(nodes) - 1
    readers: dict[int, set[int]] = {t: set() for t in range(len(shapes))}
    for n in nodes:
        for t in n.inputs:  # an in-place op reads (and rewrites) its input, keeping it alive
            readers[t].add(n.index)
    infos = []
    for t, s in enumerate(shapes):
        first = max(producers[t], 0)
        end = last if t in outputs else max(readers[t], default=first)
        infos.append(TensorInfo(id=t, shape=s, first_use=first, last_use=end, producer=producers[t],
                                consumers=tuple(sorted(readers[t]))))
    return tuple(infos)


# ---------------------------------------------------------------------------- what the device runs
@dataclass(frozen=True)
class RuntimeTensor(LiveTensor):
    """A tensor the device stores: shape and lifetime (in runtime op steps), the graph tensor whose value it holds.

    `grid_of` names the quantized layer whose input grid the tensor is in (its a_bits apply when
    activations are packed); None for an 8-bit tensor calibrated on the value (the input, and any value
    that is not read by exactly one quantized layer: residual paths, pooling, the logits).
    """

    source: int
    grid_of: str | None


@dataclass(frozen=True)
class RuntimeOp:
    """One op the device runs: a graph node (layer, add, pool) with the in-place ops folded into it, or a
    normalise / requantize writing a tensor into the input grid of the quantized layer `reader`."""

    step: int
    kind: str                  # conv2d, depthwise_conv2d, fully_connected, add, pool, elementwise, normalise, requantize
    name: str
    node: Node | None          # the graph node it runs; None for normalise / requantize
    inputs: tuple[int, ...]    # runtime tensor ids
    output: int
    in_shape: tuple[int, ...]
    reader: Node | None = None           # normalise / requantize: the layer whose input grid it writes
    fused: tuple[Node, ...] = ()         # the in-place nodes on the output, in order (bn, relu, relu6, identity, views)

    @property
    def weighted(self) -> bool:
        return self.kind in QUANTIZABLE or self.kind == "normalise"

    @property
    def act(self) -> str | None:
        """The activation folded into the op (relu / relu6), if any."""
        return next((m.op_type for m in self.fused if m.op_type in ("relu", "relu6")), None)


@dataclass(frozen=True)
class Schedule:
    """The runtime ops in execution order and the tensors they use (independent of bit widths)."""

    ops: tuple[RuntimeOp, ...]
    tensors: tuple[RuntimeTensor, ...]

    def producer(self, tensor: int) -> RuntimeOp | None:
        """The op writing runtime tensor `tensor` (None for the graph input)."""
        return next((op for op in self.ops if op.output == tensor), None)


def runtime_schedule(graph: ExecGraph) -> Schedule:
    """The ops and tensors the device runs for `graph` — the lowering emits exactly these, the cost model prices them.

    BN, ReLU/ReLU6, identity and views are folded into the op producing their input. Every node runs once:
    a layer or add writes directly into the input grid of its reader when exactly one quantized layer
    reads it (single rounding from the accumulator, as fake quantization rounds); any other value is
    written once into a calibrated 8-bit tensor, and each quantized layer reading it gets a
    ``requantize`` op into its own grid right before it (one op per element instead of running the
    producer again per grid). The graph input reaches each first layer through a ``normalise`` op.
    Pooling (and a bn/relu that cannot work in place, ``elementwise``) keeps its input's 8-bit tensor.
    """
    from search.planner import live_ranges

    nodes = graph.nodes
    readers = {t.id: sorted({i for i in t.consumers if not (nodes[i].in_place and nodes[i].output == t.id)})
               for t in graph.tensors}
    shapes: list[tuple[int, ...]] = []
    sources: list[int] = []
    grids: list[str | None] = []
    ops: list[dict[str, Any]] = []
    value: dict[int, int] = {}                 # graph tensor → runtime tensor of its 8-bit value
    in_grid: dict[tuple[int, str], int] = {}   # (graph tensor, layer) → runtime tensor in that layer's input grid

    def tensor(src: int, grid: str | None) -> int:
        shapes.append(graph.tensors[src].shape), sources.append(src), grids.append(grid)
        return len(shapes) - 1

    def layer_input(t: int, layer: Node) -> int:
        """`t` in `layer`'s input grid: produced there directly, else a normalise / requantize op now."""
        if (t, layer.name) not in in_grid:
            x = tensor(t, layer.name)
            kind = "normalise" if t in graph.inputs else "requantize"
            ops.append(dict(kind=kind, name=f"{layer.name}.{kind}", node=None, inputs=(value[t],), output=x,
                            in_shape=graph.tensors[t].shape, reader=layer))
            in_grid[(t, layer.name)] = x
        return in_grid[(t, layer.name)]

    for t in graph.inputs:
        value[t] = tensor(t, None)
    for n in nodes:
        if n.in_place:
            continue
        out = n.output
        fused = tuple(m for m in nodes[n.index + 1:] if m.in_place and m.output == out)
        if n.quantizable or n.op_type == "add":
            q_readers = [nodes[i] for i in readers[out] if nodes[i].quantizable]
            one_grid = len(q_readers) == len(readers[out]) == 1 and out not in graph.outputs
            ins = (layer_input(n.inputs[0], n),) if n.quantizable else tuple(value[t] for t in n.inputs)
            o = tensor(out, q_readers[0].name if one_grid else None)
            if one_grid:
                in_grid[(out, q_readers[0].name)] = o
            else:
                value[out] = o
            ops.append(dict(kind=n.op_type, name=n.name, node=n, inputs=ins, output=o, in_shape=n.in_shapes[0],
                            fused=fused))
        else:  # pool, or a bn/relu that cannot work in place: keeps its input's 8-bit quantisation
            o = value[out] = tensor(out, None)
            ops.append(dict(kind="pool" if n.op_type == "pool" else "elementwise", name=n.name, node=n,
                            inputs=tuple(value[t] for t in n.inputs), output=o, in_shape=n.in_shapes[0], fused=fused))

    lives = live_ranges(len(shapes), [(op["inputs"], (op["output"],)) for op in ops],
                        [value[t] for t in graph.inputs], [value[t] for t in graph.outputs])
    tensors = tuple(RuntimeTensor(id=i, shape=shapes[i], first_use=lives[i][0], last_use=lives[i][1],
                                  source=sources[i], grid_of=grids[i]) for i in range(len(shapes)))
    return Schedule(tuple(RuntimeOp(step=i, **op) for i, op in enumerate(ops)), tensors)
