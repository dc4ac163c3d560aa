r"""Checking that a function commutes with rotations.

A function :math:`f` is equivariant when :math:`f(\rho_{in}(R)\,x) = \rho_{out}(R)\,f(x)`
for every rotation :math:`R`. :func:`equivariance_error` measures the left side minus the
right side for one rotation; :func:`assert_equivariant` raises with a per-output report
when it exceeds a tolerance.

How each argument and output transforms is given by a *kind*:

======================  ============================================  =========================
kind                    tensor                                         transforms as
======================  ============================================  =========================
``None`` / ``"scalar"``  anything (also non-tensors, e.g. edge_index)  unchanged
``"vector"``            ``[..., 3]`` (positions, forces, cell rows)   :math:`v \mapsto R v`
``"matrix"``            ``[..., 3, 3]`` (stress)                       :math:`M \mapsto R M R^\top`
``CoefficientLayout``   ``[..., (lmax+1)**2, C]`` l-major features     :math:`x^{(l)} \mapsto D^l(R)\,x^{(l)}`
``int`` ``lmax``        same, shorthand for ``CoefficientLayout(lmax)``
======================  ============================================  =========================

Grad mode: the function runs in the caller's grad mode, as any torch call does, so functions
that differentiate inside (conservative forces :math:`-\partial E/\partial x`, a stress from
the strain derivative) work as they are. The outputs are compared detached. To save memory when
checking a function that needs no gradients, call the check inside ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..so3 import CoefficientLayout, check_rotation, wigner_D_blocks

__all__ = [
    "EquivarianceError",
    "apply_rotation",
    "assert_equivariant",
    "equivariance_error",
    "quaternion_to_matrix",
    "random_rotation",
]

Kind = Any  # None | "scalar" | "vector" | "matrix" | CoefficientLayout | int


def apply_rotation(x: Any, kind: Kind, R: torch.Tensor) -> Any:
    r"""Rotate ``x`` by ``R[3, 3]`` as its ``kind`` says.

    =======================  ===============================================  =======================================
    kind                     tensor                                           transforms as
    =======================  ===============================================  =======================================
    ``None`` / ``"scalar"``  anything (also non-tensors, e.g. edge_index)     unchanged
    ``"vector"``             ``[..., 3]`` (positions, forces, cell rows)      :math:`v \mapsto R v`
    ``"matrix"``             ``[..., 3, 3]`` (stress)                         :math:`M \mapsto R M R^\top`
    ``CoefficientLayout``    ``[..., (lmax+1)**2, C]`` l-major features       :math:`x^{(l)} \mapsto D^l(R)\,x^{(l)}`
    ``int`` ``lmax``         same, shorthand for ``CoefficientLayout(lmax)``
    =======================  ===============================================  =======================================

    Example:
        >>> R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])   # 90 degrees about z
        >>> apply_rotation(torch.tensor([[1.0, 0.0, 0.0]]), "vector", R)
        tensor([[0., 1., 0.]])
        >>> x = torch.zeros(1, 4, 1); x[0, 1:4, 0] = torch.tensor([1.0, 0.0, 0.0])       # l = 1 part: (x, y, z)
        >>> apply_rotation(x, 1, R)[0, :, 0]
        tensor([0., 0., 1., 0.])
    """
    if kind is None or kind == "scalar":
        return x
    R = R.to(dtype=x.dtype, device=x.device)
    if kind == "vector":
        return x @ R.T
    if kind == "matrix":
        return R @ x @ R.T
    layout = CoefficientLayout(kind) if isinstance(kind, int) else kind
    if not isinstance(layout, CoefficientLayout):
        raise ValueError(f"unknown kind {kind!r}: use None, 'scalar', 'vector', 'matrix', an int lmax "
                         "or a CoefficientLayout")
    if x.shape[-2] != layout.dim:
        raise ValueError(f"a feature of {layout} must have shape [..., {layout.dim}, C], got {tuple(x.shape)}")
    parts = [
        torch.einsum("ij,...jc->...ic", D, x[..., layout.degree_slice(l), :])
        for l, D in enumerate(wigner_D_blocks(layout.lmax, R))
    ]
    return torch.cat(parts, dim=-2)


@dataclass(frozen=True)
class EquivarianceError:
    r"""Error of one output: ``max |f(rho_in(R) x) - rho_out(R) f(x)|`` and relative to ``max |f(x)|``.

    .. math:: \mathrm{absolute} = \max\bigl|f(\rho_{in}(R)\,x) - \rho_{out}(R)\,f(x)\bigr|, \qquad
              \mathrm{relative} = \mathrm{absolute} / \max\bigl|\rho_{out}(R)\,f(x)\bigr|

    Attributes:
        name: the output (``"output"``, ``"output 1"``, or its dict key).
        kind: how it transforms (see :func:`apply_rotation`).
        absolute: the largest absolute error.
        relative: the absolute error over the largest entry of the expected output.
    """

    name: str
    kind: Kind
    absolute: float
    relative: float

    def __str__(self) -> str:
        return f"{self.name} ({_kind_name(self.kind)}): max abs error {self.absolute:.3g}, relative {self.relative:.3g}"


def _kind_name(kind: Kind) -> str:
    if kind is None:
        return "scalar"
    return repr(kind) if not isinstance(kind, str) else kind


def _as_items(outputs: Any, kinds: Any) -> list[tuple[str, Any, Kind]]:
    if isinstance(outputs, Mapping):
        if not isinstance(kinds, Mapping):
            raise ValueError("the function returns a dict: out_kinds must be a dict with the same keys")
        return [(str(k), outputs[k], kinds[k]) for k in kinds]
    if isinstance(outputs, (tuple, list)):
        if not isinstance(kinds, (tuple, list)) or len(kinds) != len(outputs):
            raise ValueError(f"the function returns {len(outputs)} outputs: give as many out_kinds")
        return [(f"output {i}", o, k) for i, (o, k) in enumerate(zip(outputs, kinds))]
    return [("output", outputs, kinds)]


def _rotate_inputs(inputs: Any, kinds: Any, R: torch.Tensor) -> Any:
    if isinstance(inputs, Mapping):
        return {k: apply_rotation(v, kinds.get(k), R) for k, v in inputs.items()}
    if len(kinds) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs but {len(kinds)} in_kinds")
    return tuple(apply_rotation(v, k, R) for v, k in zip(inputs, kinds))


def _call(func: Callable, inputs: Any) -> Any:
    return func(**inputs) if isinstance(inputs, Mapping) else func(*inputs)


def equivariance_error(
    func: Callable,
    inputs: Sequence[Any] | Mapping[str, Any],
    in_kinds: Sequence[Kind] | Mapping[str, Kind],
    out_kinds: Any,
    rotation: torch.Tensor | None = None,
) -> list[EquivarianceError]:
    """Per-output equivariance error of ``func`` for one rotation.

    Args:
        func: called as ``func(*inputs)`` (or ``func(**inputs)`` for a dict).
        inputs: the arguments.
        in_kinds: how each argument transforms (same structure as ``inputs``; for a dict,
            missing keys are scalars).
        out_kinds: how each output transforms: one kind, a sequence for a tuple output, or
            a dict for a dict output (only the keys named are checked).
        rotation: ``R[3, 3]``; default: drawn uniformly from SO(3).

    The kinds are those of :func:`apply_rotation`. ``func`` runs in the caller's grad mode
    (gradients on by default, so it may call :func:`torch.autograd.grad`; wrap the call in
    ``torch.no_grad()`` when it needs none); its outputs are compared detached. Returns one
    :class:`EquivarianceError` per output; nothing is asserted (see :func:`assert_equivariant`).

    Example:
        >>> from so2nn.so3 import spherical_harmonics
        >>> v = torch.randn(5, 3, dtype=torch.float64)
        >>> [error] = equivariance_error(lambda v: spherical_harmonics(3, v).unsqueeze(-1), [v], ["vector"], 3)
        >>> error.relative < 1e-12
        True
    """
    rotation = random_rotation() if rotation is None else rotation
    check_rotation(rotation, "rotation")
    # No torch.no_grad() here: a function that differentiates inside (conservative forces,
    # stress) needs the caller's grad mode; the outputs are detached before they are compared.
    reference = _as_items(_call(func, inputs), out_kinds)
    rotated = _as_items(_call(func, _rotate_inputs(inputs, in_kinds, rotation)), out_kinds)
    errors = []
    for (name, out, kind), (_, out_rot, _) in zip(reference, rotated):
        out, out_rot = _detached(out), _detached(out_rot)
        expected = apply_rotation(out, kind, rotation)
        absolute = float((out_rot - expected).abs().max()) if out.numel() else 0.0
        scale = float(expected.abs().max()) if out.numel() else 0.0
        errors.append(EquivarianceError(name, kind, absolute, absolute / scale if scale > 0 else absolute))
    return errors


def _detached(x: Any) -> Any:
    return x.detach() if torch.is_tensor(x) else x


def random_rotation(generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A rotation matrix drawn uniformly (Haar measure) from SO(3), via a normalised Gaussian quaternion.

    Example:
        >>> R = random_rotation(torch.Generator().manual_seed(0))
        >>> R.shape, R.dtype, bool(torch.allclose(R @ R.T, torch.eye(3, dtype=R.dtype)))
        (torch.Size([3, 3]), torch.float64, True)
    """
    q = torch.randn(4, generator=generator, dtype=torch.float64)
    return quaternion_to_matrix(q / q.norm()).to(dtype)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``[..., 3, 3]`` of unit quaternions ``q [..., 4]``, ordered ``(w, x, y, z)``.

    Example:
        >>> quaternion_to_matrix(torch.tensor([0.0, 0.0, 0.0, 1.0]))     # pi about z
        tensor([[-1.,  0.,  0.],
                [ 0., -1.,  0.],
                [ 0.,  0.,  1.]])
    """
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def _default_tolerance(inputs: Any) -> float:
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    dtypes = {v.dtype for v in values if torch.is_tensor(v) and v.is_floating_point()}
    return 1e-10 if dtypes == {torch.float64} else 1e-5


def assert_equivariant(
    func: Callable,
    inputs: Sequence[Any] | Mapping[str, Any],
    in_kinds: Sequence[Kind] | Mapping[str, Kind],
    out_kinds: Any,
    rotation: torch.Tensor | None = None,
    tolerance: float | None = None,
) -> list[EquivarianceError]:
    """Assert that ``func`` is equivariant under ``rotation`` (default: a random one), output by output.

    The test passes for an output when its *relative* error (the absolute error over the
    largest entry of the expected output) is at most ``tolerance``; the default is
    ``1e-10`` when every floating input is float64, else ``1e-5``. On failure the
    :class:`AssertionError` lists the error of every output. Returns the errors.

    ``func`` runs in the caller's grad mode (see :func:`equivariance_error`): a function that
    computes forces or stress by autograd is checked as it is.

    Example:
        >>> from so2nn.so3 import spherical_harmonics
        >>> R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        >>> v = torch.randn(10, 3, dtype=torch.float64)
        >>> errors = assert_equivariant(
        ...     lambda v: spherical_harmonics(2, v).unsqueeze(-1), [v], ["vector"], 2, R)

        Conservative forces, by autograd inside the function:

        >>> def energy_and_forces(pos):
        ...     pos = pos.detach().requires_grad_()
        ...     energy = (torch.pdist(pos) - 1.0).square().sum()
        ...     return {"energy": energy, "forces": -torch.autograd.grad(energy, pos)[0]}
        >>> errors = assert_equivariant(energy_and_forces, [v], ["vector"], {"energy": None, "forces": "vector"}, R)
    """
    tolerance = _default_tolerance(inputs) if tolerance is None else tolerance
    errors = equivariance_error(func, inputs, in_kinds, out_kinds, rotation)
    if any(not e.relative <= tolerance for e in errors):
        report = "\n  ".join(str(e) for e in errors)
        raise AssertionError(f"not equivariant (tolerance {tolerance:.3g} relative):\n  {report}")
    return errors
