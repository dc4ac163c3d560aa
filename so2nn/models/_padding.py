r"""Padding a model's inputs to size buckets, so that a compiled model sees few shapes.

A CUDA graph (and a model compiled with ``dynamic=False``) replays a fixed sequence of kernels
on tensors of fixed shapes. In a relaxation or molecular dynamics the number of edges changes
from step to step, and with it every edge tensor's shape. :func:`pad_inputs` rounds the atom
and edge counts up to the next size of a :class:`SizeBuckets` sequence, so that most steps
share a shape; :func:`unpad_outputs` drops what the padding added.

The padded atoms and edges contribute nothing to the real systems:

* the padded atoms form **one extra system** (its own energy row, its own stress and strain
  row), so every per-system sum, mean and normalisation of the real systems is unchanged;
* the padded edges join **padded atoms only**, so no message, attention weight (the softmax is
  over the edges of one target atom) or edge-degree term reaches a real atom, and neither does
  any gradient: forces :math:`-\partial E/\partial r` and the strain derivative of the real
  systems are those of the unpadded input;
* the padded atoms sit on a line, ``(min_distance + cutoff) / 2`` apart, and each padded edge
  joins two neighbours on that line: every padded edge is as long as that, never shorter than
  the model's ``min_distance`` and within its cutoff, with a finite edge frame;
* their atomic number is 1 (hydrogen: a row of every embedding table), and in a periodic batch
  the extra system is not periodic (``pbc`` False, zero cell offsets) with a cell ``L I`` that
  holds the line, so it has a valid, non-singular cell.

Per-node operations (norms, activations, feed-forward layers) act on each atom alone. What
padding does change is the random stream of training-time regularisation (drop-path draws one
mask entry per system, the extra system included): padding is meant for inference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ._inputs import INPUT_FIELDS

__all__ = ["PADDING_ATOMIC_NUMBER", "Padding", "SizeBuckets", "bucket_size", "pad_inputs", "unpad_outputs"]

#: The atomic number of padded atoms (hydrogen: every embedding table has its row).
PADDING_ATOMIC_NUMBER = 1

#: Outputs with one row per system and one per atom, which :func:`unpad_outputs` knows how to cut.
_PER_SYSTEM = ("energy", "stress")
_PER_ATOM = ("forces",)


def bucket_size(n: int, multiple: int, ratio: float = 1.25) -> int:
    r"""The smallest size :math:`s_k \ge n` of the sequence

    .. math:: s_0 = m, \qquad s_{k+1} = \max\bigl(s_k + m,\; m \lceil r\, s_k / m \rceil\bigr)

    (``m = multiple``, ``r = ratio``): multiples of ``m`` that grow geometrically. The
    sequence does not depend on ``n``, so every count in :math:`(s_{k-1}, s_k]` maps to the
    same size :math:`s_k`, and padding adds less than a fraction :math:`r - 1` of the size
    beyond the first few steps of ``m``.

    Example:
        >>> [bucket_size(n, 32) for n in (1, 32, 33, 100, 129, 130)]
        [32, 32, 64, 128, 160, 160]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the count to round up must be an int >= 0, got {n!r}")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be an int >= 1, got {multiple!r}")
    if not ratio > 1 or not math.isfinite(ratio):
        raise ValueError(f"ratio must be a finite number > 1, got {ratio!r}")
    size = multiple
    while size < n:
        size = max(size + multiple, multiple * math.ceil(ratio * size / multiple))
    return size


@dataclass(frozen=True)
class SizeBuckets:
    r"""The sizes that a batch's atom and edge counts are rounded up to (:func:`bucket_size`).

    Why these defaults: each bucket is a captured CUDA graph (memory, and a warm-up of seconds
    to a minute), so their number must stay small, while padding costs compute in proportion to
    what it adds. A geometric sequence keeps both in check at every size: the number of buckets
    up to :math:`n` grows as :math:`\log_r n`, the padding is at most about :math:`r - 1` of the
    size. With ``ratio=1.25`` a relaxation or an MD run, whose edge count drifts by a few
    percent, stays within one or two edge buckets, and the padding costs at most a quarter more
    work. The multiples (32 atoms, 256 edges) keep small systems in one bucket for a whole run
    and every padded size a multiple of a GPU's tile sizes.

    Attributes:
        ratio: :math:`r > 1`, the growth of the sequence.
        atom_multiple: atom counts are multiples of this.
        edge_multiple: edge counts are multiples of this.

    Example:
        >>> buckets = SizeBuckets()
        >>> buckets.atoms(66), buckets.edges(1300), buckets.edges(1700)
        (96, 1792, 1792)
    """

    ratio: float = 1.25
    atom_multiple: int = 32
    edge_multiple: int = 256

    def __post_init__(self) -> None:
        bucket_size(0, self.atom_multiple, self.ratio)  # the checks, with the argument's name
        bucket_size(0, self.edge_multiple, self.ratio)

    def atoms(self, n: int) -> int:
        """The atom count that ``n`` atoms are padded to."""
        return bucket_size(n, self.atom_multiple, self.ratio)

    def edges(self, n: int) -> int:
        """The edge count that ``n`` edges are padded to."""
        return bucket_size(n, self.edge_multiple, self.ratio)


@dataclass(frozen=True)
class Padding:
    """What :func:`pad_inputs` added: the real counts, and the padded totals.

    Attributes:
        num_atoms: real atoms (the first ``num_atoms`` rows of the padded atoms).
        num_systems: real systems (the first rows of the per-system outputs).
        num_edges: real edges (the first columns of the padded ``edge_index``).
        padded_atoms: atoms after padding (a bucket size).
        padded_edges: edges after padding (a bucket size).
    """

    num_atoms: int
    num_systems: int
    num_edges: int
    padded_atoms: int
    padded_edges: int

    @property
    def shape_key(self) -> tuple[int, int, int]:
        """``(systems, atoms, edges)`` after padding: the shapes that a compiled model sees."""
        return self.num_systems + 1, self.padded_atoms, self.padded_edges


def pad_inputs(
    fields: Mapping[str, torch.Tensor],
    *,
    cutoff: float,
    min_distance: float = 0.0,
    buckets: SizeBuckets | None = None,
) -> tuple[dict[str, torch.Tensor], Padding]:
    r"""A model's keyword inputs padded to the next bucket sizes, and what was added.

    The padded atoms form one extra system, joined only to each other (see the module's
    docstring for why they contribute nothing to the real systems). At least two atoms are
    added (so that a padded edge can join two of them); edges are added up to the next bucket.

    Args:
        fields: the model's keyword inputs (:data:`~so2nn.models.INPUT_FIELDS`): ``pos [N, 3]``,
            ``atomic_numbers [N]``, a precomputed ``edge_index [2, E]`` (required: padding
            needs the edge count), and optionally ``natoms [B]`` and/or ``batch [N]`` (neither:
            one system), ``cell [B, 3, 3]``, ``pbc [B, 3]`` and ``cell_offsets [E, 3]``
            (required with a cell).
        cutoff: the model's cutoff radius (Angstrom); padded edges are shorter.
        min_distance: the model's smallest allowed distance (Angstrom); padded edges are longer.
        buckets: the size sequences (default :class:`SizeBuckets`).

    Returns:
        ``(padded, padding)``: the padded inputs (with ``natoms`` and ``batch`` always set, so
        that the model needs to read no value to count the systems) and a :class:`Padding`
        for :func:`unpad_outputs`.

    Example:
        >>> fields = dict(pos=torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
        ...               atomic_numbers=torch.tensor([8, 1]), edge_index=torch.tensor([[0, 1], [1, 0]]))
        >>> padded, padding = pad_inputs(fields, cutoff=5.0)
        >>> padded["pos"].shape, padded["edge_index"].shape, padded["natoms"].tolist()
        (torch.Size([32, 3]), torch.Size([2, 256]), [2, 30])
        >>> padding
        Padding(num_atoms=2, num_systems=1, num_edges=2, padded_atoms=32, padded_edges=256)
    """
    buckets = SizeBuckets() if buckets is None else buckets
    unknown = sorted(set(fields) - set(INPUT_FIELDS))
    if unknown:
        raise ValueError(f"unknown input field(s) {unknown}: pad_inputs reads {list(INPUT_FIELDS)}")
    if not (math.isfinite(cutoff) and math.isfinite(min_distance) and 0 <= min_distance < cutoff):
        raise ValueError(f"need 0 <= min_distance < cutoff (finite), got min_distance={min_distance}, "
                         f"cutoff={cutoff}")
    for name in ("pos", "atomic_numbers", "edge_index"):
        if fields.get(name) is None:
            hint = " (padding needs the edge count: build the graph first, e.g. with model.build_graph)" \
                if name == "edge_index" else ""
            raise ValueError(f"pad_inputs needs `{name}`{hint}")
    pos, numbers, edge_index = fields["pos"], fields["atomic_numbers"], fields["edge_index"]
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must have shape [N, 3], got {tuple(pos.shape)}")
    n, device = pos.shape[0], pos.device
    if numbers.shape != (n,):
        raise ValueError(f"atomic_numbers must have shape [N={n}], got {tuple(numbers.shape)}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    e = edge_index.shape[1]

    natoms, batch = fields.get("natoms"), fields.get("batch")
    if natoms is not None:
        natoms = torch.as_tensor(natoms, device=device).long().view(-1)
        num_systems = natoms.numel()
        if batch is None:
            batch = torch.repeat_interleave(torch.arange(num_systems, device=device), natoms, output_size=n)
    elif batch is not None:
        num_systems = int(batch.max()) + 1 if n else 1
        natoms = torch.bincount(batch, minlength=num_systems)
    else:
        num_systems = 1
        natoms = torch.tensor([n], device=device)
        batch = torch.zeros(n, dtype=torch.long, device=device)
    if batch.shape != (n,):
        raise ValueError(f"batch must have shape [N={n}], got {tuple(batch.shape)}")

    total_atoms, total_edges = buckets.atoms(n + 2), buckets.edges(e)
    p, pe = total_atoms - n, total_edges - e
    length = 0.5 * (min_distance + cutoff)
    # padded atom k at (k * length, 0, 0); padded edge k into atom k mod p, from its neighbour on the line
    target = torch.arange(pe, device=device) % p
    source = torch.where(target + 1 < p, target + 1, target - 1)
    line = torch.zeros(p, 3, dtype=pos.dtype, device=device)
    line[:, 0] = length * torch.arange(p, dtype=pos.dtype, device=device)
    padded = {
        "pos": torch.cat([pos, line]),
        "atomic_numbers": torch.cat([numbers.long(), numbers.new_full((p,), PADDING_ATOMIC_NUMBER).long()]),
        "natoms": torch.cat([natoms, natoms.new_tensor([p])]),
        "batch": torch.cat([batch.long(), torch.full((p,), num_systems, dtype=torch.long, device=device)]),
        "edge_index": torch.cat([edge_index, n + torch.stack([source, target]).to(edge_index.dtype)], dim=1),
    }
    cell, pbc, offsets = fields.get("cell"), fields.get("pbc"), fields.get("cell_offsets")
    if cell is not None:
        cell = cell.reshape(-1, 3, 3)
        if cell.shape[0] != num_systems:
            raise ValueError(f"cell must have one [3, 3] matrix per system ({num_systems}), "
                             f"got {cell.shape[0]}")
        if offsets is None:
            raise ValueError("a periodic input's edge_index needs its cell_offsets [E, 3] to be padded")
        # a box that holds the line of padded atoms: a valid cell, unused (zero offsets, not periodic)
        box = (p * length + cutoff) * torch.eye(3, dtype=cell.dtype, device=device)
        padded["cell"] = torch.cat([cell, box[None]])
    if pbc is not None:
        pbc = torch.as_tensor(pbc, device=device).bool().reshape(-1, 3).expand(num_systems, 3)
        padded["pbc"] = torch.cat([pbc, pbc.new_zeros(1, 3)])
    if offsets is not None:
        if offsets.shape != (e, 3):
            raise ValueError(f"cell_offsets must have shape [E={e}, 3], got {tuple(offsets.shape)}")
        padded["cell_offsets"] = torch.cat([offsets, offsets.new_zeros(pe, 3)])
    return padded, Padding(n, num_systems, e, total_atoms, total_edges)


def unpad_outputs(outputs: Mapping[str, torch.Tensor], padding: Padding) -> dict[str, torch.Tensor]:
    """The outputs of the real systems and atoms: the extra system's rows of ``energy [B + 1]``
    and ``stress [B + 1, 3, 3]`` and the padded atoms' rows of ``forces`` dropped (views of the
    padded outputs). An output this function does not know raises a ValueError naming it.

    Example:
        >>> padding = Padding(num_atoms=2, num_systems=1, num_edges=2, padded_atoms=32, padded_edges=256)
        >>> out = unpad_outputs({"energy": torch.zeros(2), "forces": torch.zeros(32, 3)}, padding)
        >>> out["energy"].shape, out["forces"].shape
        (torch.Size([1]), torch.Size([2, 3]))
    """
    unknown = sorted(set(outputs) - set(_PER_SYSTEM) - set(_PER_ATOM))
    if unknown:
        raise ValueError(f"unpad_outputs cannot cut output(s) {unknown}: it knows the per-system outputs "
                         f"{list(_PER_SYSTEM)} and the per-atom outputs {list(_PER_ATOM)}")
    rows = {name: padding.num_systems if name in _PER_SYSTEM else padding.num_atoms for name in outputs}
    return {name: value[: rows[name]] for name, value in outputs.items()}
