"""Invariant edge features: radial bases, the radial MLP, and atom-type edge embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import ConstantsModule

__all__ = ["AtomEdgeEmbedding", "RadialBasis", "RadialMLP"]


class RadialBasis(ConstantsModule):
    r"""Expansion of edge lengths :math:`d` in a radial basis, ``[E] -> [E, num_basis]``.

    ``"gaussian"`` (EquiformerV2's smearing): centres :math:`\mu_k` evenly spaced on
    :math:`[0, r_c]`, width :math:`\sigma = w\,(\mu_1 - \mu_0)`,

    .. math:: \phi_k(d) = \exp\!\bigl(-(d - \mu_k)^2 / (2\sigma^2)\bigr).

    ``"bessel"`` (DimeNet): :math:`\phi_k(d) = \sqrt{2/r_c}\,\sin(k\pi d / r_c) / d`,
    :math:`k = 1..K`.

    ``envelope="polynomial"`` multiplies by DimeNet's smooth cutoff
    :math:`u(x) = 1 - \tfrac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \tfrac{p(p+1)}{2} x^{p+2}`,
    :math:`x = d / r_c` (zero beyond :math:`r_c`), which makes energies smooth when atoms
    cross the cutoff; the released EquiformerV2 models use none.

    Args:
        num_basis: number of functions (EquiformerV2: 600).
        cutoff: :math:`r_c`.
        basis: ``"gaussian"`` or ``"bessel"``.
        basis_width_scalar: :math:`w` for the Gaussians (EquiformerV2: 2.0).
        envelope: ``None`` or ``"polynomial"``.
        envelope_exponent: :math:`p`.

    Example:
        >>> RadialBasis(8, cutoff=5.0)(torch.tensor([1.0, 2.5])).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        num_basis: int,
        cutoff: float,
        basis: str = "gaussian",
        basis_width_scalar: float = 2.0,
        envelope: str | None = None,
        envelope_exponent: int = 5,
    ) -> None:
        super().__init__()
        if basis not in ("gaussian", "bessel"):
            raise ValueError(f"basis must be 'gaussian' or 'bessel', got {basis!r}")
        if envelope not in (None, "polynomial"):
            raise ValueError(f"envelope must be None or 'polynomial', got {envelope!r}")
        if not (isinstance(num_basis, int) and num_basis >= 2):
            raise ValueError(f"num_basis must be an int >= 2, got {num_basis!r}")
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        self.num_basis, self.cutoff, self.basis = num_basis, float(cutoff), basis
        self.basis_width_scalar, self.envelope, self.envelope_exponent = basis_width_scalar, envelope, envelope_exponent
        if basis == "gaussian":
            offset = torch.linspace(0.0, cutoff, num_basis, dtype=torch.float64, device="cpu")
            self.register_constant("offset", offset)
            self.coeff = -0.5 / (basis_width_scalar * float(offset[1] - offset[0])) ** 2
        else:
            frequency = torch.arange(1, num_basis + 1, dtype=torch.float64, device="cpu") * math.pi / cutoff
            self.register_constant("frequency", frequency)

    def extra_repr(self) -> str:
        return f"num_basis={self.num_basis}, cutoff={self.cutoff}, basis={self.basis!r}, envelope={self.envelope!r}"

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        d = distance.unsqueeze(-1)
        if self.basis == "gaussian":
            out = torch.exp(self.coeff * (d - self.offset) ** 2)
        else:
            out = math.sqrt(2.0 / self.cutoff) * torch.sin(self.frequency * d) / d
        if self.envelope == "polynomial":
            p = self.envelope_exponent
            x = d / self.cutoff
            u = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
            out = out * torch.where(x < 1, u, torch.zeros_like(u))
        return out


class RadialMLP(nn.Module):
    r"""The radial function of EquiformerV2: ``Linear -> LayerNorm -> SiLU`` between each
    pair of sizes in ``channels``, and a final ``Linear``.

    Args:
        channels: ``[in, hidden, ..., out]``.

    Example:
        >>> RadialMLP([16, 32, 32, 10])(torch.randn(5, 16)).shape
        torch.Size([5, 10])
    """

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        if len(channels) < 2 or any(not (isinstance(c, int) and c > 0) for c in channels):
            raise ValueError(f"channels must be at least two positive ints, got {channels!r}")
        self.channels = list(channels)
        modules: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(channels[:-1], channels[1:])):
            modules.append(nn.Linear(n_in, n_out))
            if i < len(channels) - 2:
                modules += [nn.LayerNorm(n_out), nn.SiLU()]
        self.net = nn.Sequential(*modules)

    @property
    def first(self) -> nn.Linear:
        """The first linear layer (``net[0]``)."""
        return self.net[0]

    @property
    def hidden_layers(self) -> nn.Sequential:
        """The layers between the first and the last linear layer (``net[1:-1]``)."""
        return self.net[1:-1]

    @property
    def last(self) -> nn.Linear:
        """The last linear layer (``net[-1]``)."""
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.channels[0]:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"RadialMLP expects [E, {self.channels[0]}] edge features, got {got}")
        if x.dtype != self.first.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"x is {x.dtype} but the weights of RadialMLP are {self.first.weight.dtype}: "
                             f"convert the input (x.to({self.first.weight.dtype})) "
                             f"or the module (module.to({x.dtype}))")
        return self.net(x)


class AtomEdgeEmbedding(nn.Module):
    r"""Invariant edge features: the radial features concatenated with learned embeddings of
    the source and target atom types, ``[E, F] -> [E, F + 2 * channels]``.

    Args:
        max_num_elements: size of the element tables (atomic numbers ``0..max-1``).
        channels: embedding size of each table.

    Shapes: ``edge_features: [E, F]``, ``atomic_numbers: [N]``, ``edge_index: [2, E]``
    -> ``[E, F + 2 * channels]``.

    Example:
        >>> embedding = AtomEdgeEmbedding(max_num_elements=10, channels=4)
        >>> edge_index = torch.tensor([[1, 2, 0], [0, 0, 1]])
        >>> embedding(torch.randn(3, 16), torch.tensor([1, 6, 8]), edge_index).shape
        torch.Size([3, 24])
    """

    def __init__(self, max_num_elements: int, channels: int) -> None:
        super().__init__()
        for name, value in (("max_num_elements", max_num_elements), ("channels", channels)):
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.max_num_elements = max_num_elements
        self.source_embedding = nn.Embedding(max_num_elements, channels)
        self.target_embedding = nn.Embedding(max_num_elements, channels)
        nn.init.uniform_(self.source_embedding.weight, -0.001, 0.001)
        nn.init.uniform_(self.target_embedding.weight, -0.001, 0.001)

    def forward(self, edge_features: torch.Tensor, atomic_numbers: torch.Tensor,
                edge_index: torch.Tensor) -> torch.Tensor:
        num_edges = edge_index.shape[-1]
        if not torch.is_tensor(edge_features) or edge_features.dim() != 2 or edge_features.shape[0] != num_edges:
            got = tuple(edge_features.shape) if torch.is_tensor(edge_features) else type(edge_features).__name__
            raise ValueError(f"edge_features must have shape [E={edge_index.shape[-1]}, F], got {got}")
        check_atomic_numbers(atomic_numbers)
        source = self.source_embedding(atomic_numbers.index_select(0, edge_index[0]))
        target = self.target_embedding(atomic_numbers.index_select(0, edge_index[1]))
        return torch.cat([edge_features, source, target], dim=-1)


def check_atomic_numbers(atomic_numbers: torch.Tensor, num_nodes: int | None = None) -> None:
    """Raise unless ``atomic_numbers`` is an integer ``[N]`` tensor (``N = num_nodes`` when given)."""
    if not torch.is_tensor(atomic_numbers) or atomic_numbers.dim() != 1 or atomic_numbers.is_floating_point() or (
        num_nodes is not None and atomic_numbers.shape[0] != num_nodes
    ):
        if torch.is_tensor(atomic_numbers):
            got = f"{tuple(atomic_numbers.shape)} {atomic_numbers.dtype}"
        else:
            got = type(atomic_numbers).__name__
        rows = "N" if num_nodes is None else num_nodes
        raise ValueError(f"atomic_numbers must be an integer tensor of shape [N={rows}], got {got}")
