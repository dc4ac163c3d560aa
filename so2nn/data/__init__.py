r"""Datasets for S2EF (structure to energy and forces): OC20's file formats and a generated demo set.

Every reader is a :class:`torch.utils.data.Dataset` of canonical items (the table is in
``so2nn/data/_canonical.py``): ``pos [N, 3]``, ``cell [1, 3, 3]``, ``pbc [1, 3]``,
``atomic_numbers [N]``, ``natoms``, ``tags [N]``, ``fixed [N]``, ``energy [1]``,
``forces [N, 3]``, ``sid``, ``fid``. A :class:`torch_geometric.loader.DataLoader` batches them
into what :class:`~so2nn.models.EquiformerV2` takes.

- :class:`LmdbDataset`: OC20's preprocessed LMDBs (one file or a directory of shards), PyG 1.x
  pickles included; :func:`write_lmdb` writes the same format.
- :class:`S2EFExtxyzDataset`: OC20's raw S2EF ``.extxyz[.xz]`` + ``.txt`` files, energies
  referenced as OC20 does; :func:`write_s2ef_extxyz` writes them.
- :class:`AseDBDataset`: ASE databases (``.db``, ``.json``, ``.aselmdb``).
- :class:`AseFileDataset`: any other file ASE reads (extxyz, ``.traj``, ``vasprun.xml``,
  ``OUTCAR``, ...), targets found by MACE-style keys (``REF_energy``, ...).
- :func:`split_dataset`: a seeded training/validation split of one dataset.
- :func:`open_dataset`: the right reader for a path.
- :func:`target_statistics`: energy mean/std and force RMS, for output normalisation.
- :mod:`so2nn.data.emt`: the embedded EMT dataset, :func:`make_emt_dataset`.

Example:
    >>> import tempfile
    >>> from torch_geometric.loader import DataLoader
    >>> train, val = make_emt_dataset(tempfile.mkdtemp(), train_systems=2, val_systems=1, frames_per_system=2)
    >>> batch = next(iter(DataLoader(open_dataset(train), batch_size=4)))
    >>> batch.num_graphs, batch.energy.shape, batch.cell.shape, batch.pbc.shape
    (4, torch.Size([4]), torch.Size([4, 3, 3]), torch.Size([4, 3]))
"""

from . import emt
from ._ase_files import AseFileDataset
from ._asedb import AseDBDataset
from ._canonical import FIELDS, DataFormatError, atoms_to_data, canonical_data, data_to_atoms
from ._extxyz import S2EFExtxyzDataset, sidecar_path, write_s2ef_extxyz
from ._lmdb import LmdbDataset, write_lmdb
from ._open import open_dataset, target_statistics
from ._split import ValidationSplit, split_dataset
from .emt import make_dataset as make_emt_dataset

__all__ = [
    "sidecar_path",
    "FIELDS",
    "AseDBDataset",
    "AseFileDataset",
    "DataFormatError",
    "LmdbDataset",
    "S2EFExtxyzDataset",
    "ValidationSplit",
    "atoms_to_data",
    "canonical_data",
    "data_to_atoms",
    "emt",
    "make_emt_dataset",
    "open_dataset",
    "split_dataset",
    "target_statistics",
    "write_lmdb",
    "write_s2ef_extxyz",
]
