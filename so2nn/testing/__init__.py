"""Testing utilities for equivariant code built on so2nn.

:func:`assert_equivariant` checks a function against random or given rotations, output by
output; :mod:`so2nn.testing.strategies` (needs ``hypothesis``) draws rotations, point
clouds, periodic cells and atomic graphs. :class:`DispatchCounter` counts the operations a call
dispatches and those that wait for the host (what a GPU would launch and where it would stall).
"""

from ._dispatch import HOST_SYNC_OPS, DispatchCounter
from ._equivariance import (
    EquivarianceError,
    apply_rotation,
    assert_equivariant,
    equivariance_error,
    quaternion_to_matrix,
    random_rotation,
)

__all__ = [
    "HOST_SYNC_OPS",
    "DispatchCounter",
    "EquivarianceError",
    "apply_rotation",
    "assert_equivariant",
    "equivariance_error",
    "quaternion_to_matrix",
    "random_rotation",
]
