"""Reading and validating a model's inputs (OC20 field names), with clear errors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_finite
from ..layers import check_edges

__all__ = ["INPUT_FIELDS", "TARGET_AND_METADATA_FIELDS", "AtomicInputs", "read_inputs"]

#: The inputs a model reads, as keyword arguments or attributes of a torch_geometric
#: ``Data``/``Batch``: ``pos [N, 3]`` and ``atomic_numbers [N]`` (required), ``natoms [B]``,
#: ``batch [N]``, ``cell [B, 3, 3]``, ``pbc [B, 3]``, and a precomputed graph ``edge_index
#: [2, E]`` (row 0 the source) with ``cell_offsets [E, 3]``. Any other keyword raises.
INPUT_FIELDS = ("pos", "atomic_numbers", "natoms", "batch", "cell", "pbc", "edge_index", "cell_offsets")

#: Attributes a ``Data``/``Batch`` may carry besides :data:`INPUT_FIELDS` without being
#: read: training targets (``energy``, ``forces``, ``stress``; OC20's older ``y``, ``force``,
#: ``y_init``, ``y_relaxed``, ``pos_relaxed``), OC20's metadata (``tags``, ``fixed``, ``sid``,
#: ``fid``, ``id``, ``oc22``), quantities derived from a stored graph (``distances``,
#: ``neighbors``) and the batch pointer ``ptr``. An attribute outside both lists raises, so
#: that a misspelled input is never silently dropped.
TARGET_AND_METADATA_FIELDS = (
    "energy", "forces", "stress", "y", "force", "y_init", "y_relaxed", "pos_relaxed",
    "tags", "fixed", "sid", "fid", "id", "oc22", "distances", "neighbors", "ptr",
)


@dataclass
class AtomicInputs:
    """A model's validated inputs, as :func:`read_inputs` returns them (shapes in the comments;
    ``cell`` is None for a system without periodic directions, ``edge_index`` and
    ``cell_offsets`` None until a graph is given or built)."""

    pos: torch.Tensor  # [N, 3]
    atomic_numbers: torch.Tensor  # [N] long
    batch: torch.Tensor  # [N] long
    num_systems: int
    cell: torch.Tensor | None  # [B, 3, 3]
    pbc: torch.Tensor  # [B, 3] bool
    edge_index: torch.Tensor | None  # [2, E]
    cell_offsets: torch.Tensor | None  # [E, 3]

    @property
    def periodic(self) -> bool:
        """Whether the systems have a cell (:func:`read_inputs` keeps one only when a direction
        is periodic, unless ``validate=False``)."""
        return self.cell is not None


def _get(data, fields: dict, name: str):
    if name in fields:
        return fields[name]
    return getattr(data, name, None) if data is not None else None


def _check_names(data, fields: dict) -> None:
    unknown = sorted(set(fields) - set(INPUT_FIELDS))
    if unknown:
        raise ValueError(f"unknown input field(s) {unknown}: a model reads {list(INPUT_FIELDS)}")
    if data is None:
        return
    from torch_geometric.data.data import BaseData

    if not isinstance(data, BaseData):
        raise ValueError(f"inputs must be a torch_geometric Data/Batch or keyword arguments, got {type(data).__name__}")
    unknown = sorted(set(data.keys()) - set(INPUT_FIELDS) - set(TARGET_AND_METADATA_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown} in the input {type(data).__name__}: a model reads {list(INPUT_FIELDS)} "
            f"and ignores only the targets and metadata {list(TARGET_AND_METADATA_FIELDS)}"
        )


def _atomic_numbers(numbers, device, validate: bool = True) -> torch.Tensor:
    """``numbers`` as a long tensor [N]: integers, or floats with whole values (OC20's LMDBs store
    them as floats); anything else (element symbols, fractions) raises, naming what was given."""
    what = "atomic_numbers must be whole numbers (a tensor or a list of ints, e.g. ase's atoms.numbers)"
    if isinstance(numbers, (str, bytes)):
        raise ValueError(f"{what}, got a {type(numbers).__name__} {numbers[:20]!r}")
    try:
        tensor = torch.as_tensor(numbers, device=device)
    except (TypeError, ValueError, RuntimeError):
        first = next(iter(numbers), None) if hasattr(numbers, "__iter__") else numbers
        raise ValueError(f"{what}, got {type(numbers).__name__} holding {first!r}") from None
    integer = tensor.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    if not (tensor.is_floating_point() or integer):
        raise ValueError(f"{what}, got dtype {tensor.dtype}")
    if validate and tensor.is_floating_point():  # (a value read back: skipped with validate=False)
        fractional = tensor != tensor.round()
        if bool(fractional.any()):
            raise ValueError(f"{what}, got {float(tensor[fractional][0])}")
    return tensor.long().view(-1)


def read_inputs(data, fields: dict, config, validate: bool = True) -> AtomicInputs:
    """Collect the inputs from a torch_geometric ``Data``/``Batch`` or keyword arguments (which
    take precedence), and check them: names (:data:`INPUT_FIELDS`, and for ``Data`` also
    :data:`TARGET_AND_METADATA_FIELDS`), shapes, finiteness, atomic numbers against
    ``config.max_num_elements``; periodic when ``pbc`` says so (default:
    ``config.use_pbc`` when a cell is given).

    ``validate=False`` skips every check that reads the inputs' values (finiteness, atomic
    numbers, ``natoms`` against the atom count, singular cells, ``edge_index`` in range): on a
    GPU each of them waits for the device. Names and shapes are still checked. Then a given
    ``cell`` is used as it is (a system whose ``pbc`` is all False keeps it: its graph has no
    periodic images, and its stress row is NaN), ``natoms`` (or a single system) gives the
    number of systems, and the caller answers for the values: graphs built by so2nn's
    calculator, torch-sim model and data loaders are.

    Example:
        >>> from so2nn.models import EquiformerV2Config
        >>> inputs = read_inputs(None, {"pos": torch.zeros(2, 3), "atomic_numbers": torch.tensor([1, 1])},
        ...                      EquiformerV2Config())
        >>> inputs.num_systems, inputs.periodic
        (1, False)
        >>> read_inputs(None, {"pos": torch.zeros(2, 3), "atomic_numbers": torch.tensor([1, 1]), "tag": 0},
        ...             EquiformerV2Config())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown input field(s) ['tag']: a model reads ['pos', 'atomic_numbers', 'natoms', ...]
    """
    _check_names(data, fields)
    pos = _get(data, fields, "pos")
    numbers = _get(data, fields, "atomic_numbers")
    if pos is None or numbers is None:
        raise ValueError("the model needs at least `pos` [N, 3] and `atomic_numbers` [N]")
    if not torch.is_tensor(pos) or pos.dim() != 2 or pos.shape[1] != 3:
        got = tuple(pos.shape) if torch.is_tensor(pos) else type(pos).__name__
        raise ValueError(f"pos must have shape [N, 3], got {got}")
    if pos.shape[0] == 0:
        raise ValueError("empty input: pos has no atoms")
    if validate:
        check_finite("pos", pos)
    numbers = _atomic_numbers(numbers, pos.device, validate)
    if numbers.shape[0] != pos.shape[0]:
        raise ValueError(f"atomic_numbers has {numbers.shape[0]} entries for {pos.shape[0]} positions")
    if validate and bool(((numbers < 0) | (numbers >= config.max_num_elements)).any()):
        bad = int(numbers[(numbers < 0) | (numbers >= config.max_num_elements)][0])
        raise ValueError(f"atomic number {bad} is outside the embedding table (0..{config.max_num_elements - 1})")

    natoms = _get(data, fields, "natoms")
    batch = _get(data, fields, "batch")
    if natoms is not None:
        natoms = _integers("natoms", natoms, pos.device)
        if validate and int(natoms.sum()) != pos.shape[0]:
            raise ValueError(f"natoms sums to {int(natoms.sum())} but there are {pos.shape[0]} atoms")
    if batch is None:
        if natoms is None:
            batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        else:  # output_size: no wait for the device to learn the length
            batch = torch.repeat_interleave(torch.arange(len(natoms), device=pos.device), natoms,
                                            output_size=pos.shape[0])
    batch = _integers("batch", batch, pos.device)
    if natoms is not None:
        num_systems = natoms.shape[0]
    elif validate or not torch.is_tensor(_get(data, fields, "batch")):
        num_systems = int(batch.max()) + 1
    else:
        raise ValueError("validate=False needs `natoms` [B] beside `batch` (the number of systems is read from it)")
    if batch.shape != numbers.shape:
        raise ValueError(f"batch must have shape [N={pos.shape[0]}], got {tuple(batch.shape)}")

    cell = _get(data, fields, "cell")
    pbc = _get(data, fields, "pbc")
    if pbc is None:
        pbc = torch.full((num_systems, 3), bool(config.use_pbc and cell is not None), device=pos.device)
    pbc = torch.as_tensor(pbc, device=pos.device).bool().reshape(-1, 3).expand(num_systems, 3)
    if cell is not None and (not validate or bool(pbc.any())):
        cell = cell.to(pos.dtype).reshape(-1, 3, 3)
        if cell.shape[0] != num_systems:
            raise ValueError(f"cell must have one [3, 3] matrix per system ({num_systems}), got {cell.shape[0]}")
        if validate:
            check_finite("cell", cell)
            det = torch.linalg.det(cell.detach().double()).abs()
            if bool((det[pbc.any(dim=1)] < 1e-9).any()):
                raise ValueError("cell is singular for a periodic system: its lattice vectors must span 3D")
    elif validate and bool(pbc.any()):
        raise ValueError("pbc is set but no cell was given: pass `cell` [B, 3, 3] or pbc=False")
    else:
        cell = None

    edge_index = _get(data, fields, "edge_index")
    offsets = _get(data, fields, "cell_offsets")
    if edge_index is not None:
        check_edges(edge_index)
        if validate and edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= pos.shape[0]):
            raise ValueError("edge_index refers to atoms that do not exist")
        if offsets is None:
            if cell is not None:
                raise ValueError("a precomputed edge_index of a periodic system needs its cell_offsets [E, 3]")
        elif offsets.shape != (edge_index.shape[1], 3):
            raise ValueError(f"cell_offsets must have shape [E={edge_index.shape[1]}, 3], got {tuple(offsets.shape)}")
    return AtomicInputs(pos, numbers, batch, num_systems, cell, pbc, edge_index, offsets)


def _integers(name: str, value, device) -> torch.Tensor:
    """``value`` as a flat int64 tensor on ``device``; a clear error for what is not numbers."""
    try:
        tensor = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be integers (a tensor or a list of ints), got {type(value).__name__} "
                         f"({error})") from None
    if tensor.is_complex():
        raise ValueError(f"{name} must be integers, got dtype {tensor.dtype}")
    return tensor.long().view(-1)
