r"""DeNS (denoising non-equilibrium structures; Liao, Smidt, Shuaibi & Das, 2024): the parts of an
EquiformerV2 trained with it (the OMat24 ``eqV2_dens`` checkpoints) that a plain one lacks.

DeNS trains on two tasks at once: the usual energies and forces of a structure, and, for a
structure whose positions were corrupted by Gaussian noise of scale :math:`\sigma`, the noise
itself, given the (uncorrupted) forces as an extra input. The network therefore has an input
encoding of those forces (and, optionally, of :math:`\sigma`) and a second output block that
predicts the noise. At prediction there is no corruption: the force input and :math:`\sigma`
are zero and the noise block's output is multiplied by zero, which leaves a constant bias in
the embedding (:class:`DenoisingEmbedding`) and an unused block in the force head
(:class:`DenoisingForceHead`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import EquivariantGraphAttention, SO3Linear
from ..so3 import CoefficientLayout, EdgeRotation
from ._heads import ForceHead

__all__ = ["DenoisingEmbedding", "DenoisingForceHead"]


class DenoisingEmbedding(nn.Module):
    r"""DeNS's encoding of the denoising inputs, as it acts at prediction time.

    In training with denoising, each atom's force :math:`f_i` and the noise scale
    :math:`\sigma` are encoded into the node features before the first block:

    .. math::

        x_i^{(l)} \mathrel{+}= W_l\,\frac{\lVert f_i\rVert}{\sqrt 3}\,Y^{(l)}(\hat f_i)
            + \delta_{l0}\,b_F + \delta_{l0}\,(w_\sigma\,\sigma + b_\sigma)

    with :math:`W_l, b_F` an :class:`~so2nn.layers.SO3Linear` from one channel (the reference's
    ``force_embedding``), :math:`Y^{(l)}` component-normalised spherical harmonics and
    :math:`(w_\sigma, b_\sigma)` a linear map of :math:`\sigma` (``noise_schedule_sigma_embedding``,
    present with ``sigma=True``). At prediction :math:`f_i = 0` and :math:`\sigma = 0` (so the
    reference's trainer encodes "no noise"), and the term is one constant vector on the scalars:

    .. math:: x_i^{(0)} \mathrel{+}= b_F + b_\sigma

    :meth:`forward` returns that vector, computed as the encoding of a zero input (one row), so
    that :math:`W_l` and :math:`w_\sigma`, which a checkpoint holds, get a zero gradient in
    training as in the reference (not none: weight decay and DDP then treat them alike).

    Args:
        layout: the node features' layout (``lmax`` of :math:`W_l`).
        channels: channels :math:`C` of the node features.
        sigma: whether the noise-scale encoding is present.

    Example:
        >>> embedding = DenoisingEmbedding(CoefficientLayout(2, 1), channels=8, sigma=True)
        >>> embedding.force_embedding.weight.shape, embedding.sigma_embedding.weight.shape
        (torch.Size([3, 8, 1]), torch.Size([8, 1]))
        >>> with torch.no_grad():
        ...     _ = embedding.force_embedding.bias.fill_(0.5), embedding.sigma_embedding.bias.fill_(0.25)
        >>> embedding().tolist() == [0.75] * 8
        True
    """

    def __init__(self, layout: CoefficientLayout, channels: int, sigma: bool = False) -> None:
        super().__init__()
        self.layout = layout
        self.force_embedding = SO3Linear(layout, 1, channels)
        self.sigma_embedding = nn.Linear(1, channels) if sigma else None

    def forward(self) -> torch.Tensor:
        """The prediction-time term :math:`b_F + b_\\sigma` ``[C]``, added to every atom's scalars."""
        # The encoding of f = 0 and sigma = 0: W_l 0 = 0 and w_sigma 0 = 0 exactly, so the result is the biases.
        zero = self.force_embedding.bias.new_zeros(1, self.layout.dim, 1)
        term = self.force_embedding(zero)[0, 0]
        if self.sigma_embedding is not None:
            term = term + self.sigma_embedding(zero[:, 0])[0]
        return term


class DenoisingForceHead(ForceHead):
    r"""The direct-force head of a DeNS model: :class:`~so2nn.models.ForceHead` plus the
    position-denoising attention.

    .. math::

        F_i = \sigma_F\,\bigl[\mathrm{Attn}(x)_i\bigr]^{(l=1)}
              + 0\cdot\bigl[\mathrm{Attn}_\text{denoise}(x)_i\bigr]^{(l=1)}

    The reference computes both attentions and, outside denoising, multiplies the second one's
    output (the predicted noise of a corrupted structure) by zero. At prediction (``eval()`` or
    no gradient) :meth:`forward` does not evaluate it: for a finite output the product is
    exactly zero and the sum exactly the first term (a non-finite denoising output, which would
    turn the reference's forces into NaN, is the one case not reproduced). In training it adds
    the zero product as the reference does, so that the block's weights get a zero gradient.
    Its weights are ``denoising_pos_block`` (the reference's name);
    :meth:`denoising_positions` evaluates it.

    The arguments are those of :class:`~so2nn.models.ForceHead`; the denoising attention has the
    same shape as the force attention.

    Example:
        >>> from so2nn.so3 import EdgeRotation
        >>> layout = CoefficientLayout(2, 1)
        >>> head = DenoisingForceHead(layout, sphere_channels=8, hidden_channels=8, num_heads=2,
        ...                           attn_alpha_channels=4, attn_value_channels=4, edge_channels_list=[6, 8, 8],
        ...                           activation="gate", grid_resolution=None)
        >>> pos = torch.randn(3, 3)
        >>> edge_index = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 2]])
        >>> rotation = EdgeRotation(layout, pos[edge_index[0]] - pos[edge_index[1]])
        >>> args = (torch.randn(3, 9, 8), torch.randn(4, 6), torch.tensor([1, 6, 8]), edge_index, rotation)
        >>> head(*args).shape, head.denoising_positions(*args).shape
        (torch.Size([3, 3]), torch.Size([3, 3]))
    """

    def __init__(self, layout: CoefficientLayout, *, forces_std: float = 1.0, forces_mean: float = 0.0,
                 **attention) -> None:
        super().__init__(layout, forces_std=forces_std, forces_mean=forces_mean, **attention)
        self.denoising_pos_block = EquivariantGraphAttention(layout, output_channels=1, alpha_drop=0.0, **attention)

    def forward(
        self,
        x: torch.Tensor,
        edge_features: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
    ) -> torch.Tensor:
        """``x [N, (lmax+1)**2, C]`` and the graph (as for the attention) -> forces ``[N, 3]``."""
        forces = super().forward(x, edge_features, atomic_numbers, edge_index, rotation)
        if self.training and torch.is_grad_enabled():  # a zero gradient for the denoising block, as the reference's
            forces = forces + 0.0 * self.denoising_positions(x, edge_features, atomic_numbers, edge_index, rotation)
        return forces

    def denoising_positions(
        self,
        x: torch.Tensor,
        edge_features: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
    ) -> torch.Tensor:
        """The denoising attention's :math:`l = 1` output ``[N, 3]``: the noise predicted for a
        corrupted structure, in the training run's normalised units (not scaled by :math:`\\sigma_F`)."""
        out = self.denoising_pos_block(x, edge_features, atomic_numbers, edge_index, rotation)
        return out[:, self.layout.degree_slice(1), 0]  # (m = -1, 0, 1) = (x, y, z), as the forces
