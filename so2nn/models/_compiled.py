r"""A model compiled for inference: one graph with dynamic shapes, or CUDA graphs per size bucket."""

from __future__ import annotations

import inspect
import sys
import time

import torch
from torch import nn

from ..graph import edge_vectors
from ._compile import compile_model
from ._inputs import read_inputs
from ._padding import SizeBuckets, pad_inputs, unpad_outputs

__all__ = ["CompiledModel"]


class CompiledModel:
    r"""Evaluate an so2nn model through :func:`torch.compile`, for inference.

    Two ways, for two workloads:

    * **dynamic shapes** (the default): ``torch.compile(model, dynamic=True)``, one compiled
      graph for every batch size, atom and edge count. For large batches, where the GPU's work
      dominates.
    * **size buckets** (``buckets``, and ``cuda_graphs=True``): every call's inputs are padded
      to the next size of a :class:`~so2nn.models.SizeBuckets` sequence
      (:func:`~so2nn.models.pad_inputs`; the padding contributes nothing to the real systems)
      and the model is compiled for fixed shapes, ``torch.compile(model, dynamic=False)``: one
      compiled graph per bucket. With ``cuda_graphs=True`` it is compiled with
      ``mode="reduce-overhead"``, so that inductor captures one CUDA graph per bucket and
      replays it: the CPU issues one launch instead of thousands of kernels. This is the
      relaxation and molecular-dynamics case (one structure or a small batch at a time), where
      an eager model is bound by the launches; as atoms move and the edge count changes, the
      steps stay in one bucket and replay its graph.

    Each call reads and checks the inputs once, eagerly (:func:`~so2nn.models.read_inputs`,
    and that no edge is shorter than the model's ``min_distance``), builds the graph with the
    model's ``build_graph`` when none is given, and then runs the compiled model, with
    ``validate=False`` when its forward takes that keyword (the checks are done: the compiled
    body then never waits for the device; a model without it checks its inputs again). The
    first call of each shape (once with dynamic shapes, once per bucket) compiles, and prints
    how long it took on standard error, e.g.
    ``so2nn: compiled the model (dynamic shapes): first call 41.2 s``. Inductor keeps the
    compiled code in its cache on disk, so a later process compiles faster (see the
    performance page of the docs).

    The model must be in eval mode and the calls made under :func:`torch.no_grad` (as the
    calculator and the torch-sim model do); gradient forces and stress are taken inside the
    model's forward. Outputs with CUDA graphs are copies (a replay overwrites the graph's own
    output buffers). torch recompiles a function at most ``torch._dynamo.config.recompile_limit``
    times (8 by default) and then runs it eagerly: with buckets, that many buckets are compiled.

    Args:
        model: an so2nn model (:class:`~so2nn.models.AtomisticModel`); with buckets, its config
            must have ``max_radius`` (the padded edges' cutoff) and may have ``min_distance``.
        cuda_graphs: compile with ``mode="reduce-overhead"`` (CUDA graphs), over size buckets.
            Needs the model on a CUDA device and inductor (``backend="inductor"``).
        buckets: pad to these size buckets (default with ``cuda_graphs``: :class:`SizeBuckets`
            ``()``; without: no padding, dynamic shapes).
        backend: :func:`torch.compile`'s backend: ``"inductor"`` (default, generates kernels);
            ``"aot_eager"`` or ``"eager"`` trace the model without generating code, fast to
            compile, for tests.

    Example:
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> model = EquiformerV2(EquiformerV2Config(
        ...     lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
        ...     attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
        ...     num_distance_basis=16, max_radius=5.0)).eval()
        >>> compiled = CompiledModel(model, buckets=SizeBuckets(), backend="eager")
        >>> pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
        >>> with torch.no_grad():
        ...     out = compiled(pos=pos, atomic_numbers=torch.tensor([8, 1, 1]))  # doctest: +SKIP
        so2nn: compiled the model for size bucket (2 systems, 32 atoms, 256 edges): first call ... s
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        cuda_graphs: bool = False,
        buckets: SizeBuckets | None = None,
        backend: str = "inductor",
    ) -> None:
        if cuda_graphs:
            device = next(model.parameters()).device
            if device.type != "cuda":
                raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, but it is on {device}: "
                                 "use compile=True (dynamic shapes) on other devices")
            if backend != "inductor":
                raise ValueError(f"cuda_graphs=True captures CUDA graphs with inductor; "
                                 f"backend={backend!r} cannot")
            buckets = SizeBuckets() if buckets is None else buckets
        if buckets is not None and getattr(model.config, "max_radius", None) is None:
            raise ValueError(f"padding to size buckets needs the model's cutoff, and "
                             f"{type(model.config).__name__} has no max_radius")
        self.model, self.cuda_graphs, self.buckets = model, cuda_graphs, buckets
        if buckets is None:
            self._compiled = compile_model(model, dynamic=True, fullgraph=False, backend=backend)
        else:
            self._compiled = compile_model(model, dynamic=False, fullgraph=False, backend=backend,
                                           mode="reduce-overhead" if cuda_graphs else None)
        self._skip_checks = {"validate": False} if _takes_validate(model) else {}
        self._shapes_seen: set = set()

    @property
    def shapes(self) -> int:
        """How many shapes (buckets; 1 with dynamic shapes) have been compiled so far."""
        return len(self._shapes_seen)

    def __call__(self, **fields: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's outputs for its keyword inputs (:data:`~so2nn.models.INPUT_FIELDS`)."""
        config = self.model.config
        inputs = read_inputs(None, fields, config)
        if inputs.edge_index is None:
            inputs.edge_index, inputs.cell_offsets = self.model.build_graph(inputs)
        fields = {
            "pos": inputs.pos, "atomic_numbers": inputs.atomic_numbers, "batch": inputs.batch,
            "natoms": torch.bincount(inputs.batch, minlength=inputs.num_systems), "pbc": inputs.pbc,
            "edge_index": inputs.edge_index,
        }
        if inputs.cell is not None:
            fields["cell"] = inputs.cell
        if inputs.cell_offsets is not None:
            fields["cell_offsets"] = inputs.cell_offsets
        # before any compilation, and needed with validate=False
        _check_min_distance(inputs, getattr(config, "min_distance", 0.0))
        padding = None
        if self.buckets is not None:
            fields, padding = pad_inputs(fields, cutoff=config.max_radius, buckets=self.buckets,
                                         min_distance=getattr(config, "min_distance", 0.0))
        key = None if padding is None else padding.shape_key
        first = key not in self._shapes_seen
        start = time.perf_counter()
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last one's outputs were copied
        out = self._compiled(**fields, **self._skip_checks)
        if padding is not None:
            out = unpad_outputs(out, padding)
        if self.cuda_graphs:
            out = {name: value.clone() for name, value in out.items()}
        if first:
            if inputs.pos.device.type == "cuda":
                torch.cuda.synchronize(inputs.pos.device)
            what = "(dynamic shapes)" if key is None else \
                f"for size bucket ({key[0]} systems, {key[1]} atoms, {key[2]} edges)"
            print(f"so2nn: compiled the model {what}: first call {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
            self._shapes_seen.add(key)
        return out


def _takes_validate(model: nn.Module) -> bool:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "validate" in parameters and parameters["validate"].kind is inspect.Parameter.KEYWORD_ONLY


def _check_min_distance(inputs, min_distance: float) -> None:
    periodic = inputs.periodic
    vec = edge_vectors(inputs.pos, inputs.edge_index, inputs.cell_offsets if periodic else None,
                       inputs.cell if periodic else None, inputs.batch)
    distance = vec.norm(dim=1)
    close = distance < min_distance
    if distance.numel() and bool(close.any()):
        e = int(close.nonzero()[0, 0])
        source, target = int(inputs.edge_index[0, e]), int(inputs.edge_index[1, e])
        raise ValueError(f"atoms {source} and {target} are {float(distance[e]):.3g} A apart "
                         f"(< min_distance={min_distance}): overlapping atoms")
