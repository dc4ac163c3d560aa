import lzma

import numpy as np
import pytest

from so2nn.data import DataFormatError, S2EFExtxyzDataset, open_dataset, write_s2ef_extxyz

# One frame as OC20's s2ef_train_*/<n>.extxyz files hold it (header layout and column order of
# the released files; values made up): a 3-atom cell, one fixed atom, tags 0/1/2.
OC20_FRAME = """3
Lattice="5.0 0.0 0.0 0.0 5.0 0.0 0.0 0.0 20.0" Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3 energy=-12.50000000 free_energy=-12.51000000 pbc="T T T"
Pt       0.00000000       0.00000000       5.00000000 F        0       0.01000000      -0.02000000       0.03000000
Pt       2.50000000       2.50000000       7.00000000 T        1      -0.10000000       0.20000000      -0.30000000
O        2.50000000       2.50000000       9.00000000 T        2       0.40000000      -0.50000000       0.60000000
"""  # noqa: E501 (the header line is OC20's, verbatim)


def test_reads_the_oc20_layout(tmp_path):
    (tmp_path / "0.extxyz").write_text(OC20_FRAME + OC20_FRAME.replace("energy=-12.5", "energy=-13.5"))
    (tmp_path / "0.txt").write_text("random1331004,frame12,-10.25\nrandom1331004,frame13,-10.25\n")
    dataset = S2EFExtxyzDataset(tmp_path / "0.extxyz")
    assert len(dataset) == 2
    item = dataset[0]
    assert item.sid == 1331004 and item.fid == 12
    assert item.energy.tolist() == [-12.5 + 10.25]  # DFT energy - reference energy
    assert dataset[1].energy.tolist() == [-13.5 + 10.25]
    assert item.atomic_numbers.tolist() == [78, 78, 8]
    assert item.tags.tolist() == [0, 1, 2]
    assert item.fixed.tolist() == [True, False, False]  # move_mask F = fixed
    assert item.pbc.tolist() == [[True, True, True]]
    np.testing.assert_allclose(item.cell[0].numpy(), np.diag([5.0, 5.0, 20.0]))
    np.testing.assert_allclose(item.pos.numpy(), [[0, 0, 5], [2.5, 2.5, 7], [2.5, 2.5, 9]])
    np.testing.assert_allclose(item.forces.numpy(), [[0.01, -0.02, 0.03], [-0.1, 0.2, -0.3], [0.4, -0.5, 0.6]],
                               rtol=1e-6)
    raw = S2EFExtxyzDataset(tmp_path / "0.extxyz", subtract_reference=False)[0]
    assert raw.energy.tolist() == [-12.5]


@pytest.mark.parametrize("name", ["7.extxyz", "7.extxyz.xz"])
def test_round_trip_through_the_writer(tmp_path, name, oc20_frames, assert_matches_atoms):
    frames = oc20_frames(3)
    references = [-1.5, 0.25, 3.0]
    extxyz, txt = write_s2ef_extxyz(tmp_path / name, frames, [11, 11, 12], [0, 1, 0], references)
    assert txt.name == ("7.txt.xz" if name.endswith(".xz") else "7.txt")
    dataset = open_dataset(extxyz)
    assert isinstance(dataset, S2EFExtxyzDataset) and len(dataset) == 3
    for k, atoms in enumerate(frames):
        assert_matches_atoms(dataset[k], atoms, atoms.get_potential_energy() - references[k],
                             sid=[11, 11, 12][k], fid=[0, 1, 0][k])


def test_writer_output_is_the_oc20_text(tmp_path, oc20_frames):
    atoms = oc20_frames(1)[0]
    extxyz, txt = write_s2ef_extxyz(tmp_path / "0.extxyz.xz", [atoms], ["random5"], ["frame9"], [-2.0])
    with lzma.open(extxyz, "rt") as f:
        lines = f.read().splitlines()
    assert lines[0] == str(len(atoms))
    header = lines[1]
    assert header.startswith('Lattice="') and 'pbc="T T T"' in header
    assert "Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3" in header
    assert f"energy={atoms.get_potential_energy():.8f}" in header and "free_energy=" in header
    first, last = lines[2].split(), lines[-1].split()
    assert first[0] == "Cu" and first[4:6] == ["F", "0"]  # bottom layer: fixed, subsurface
    assert last[0] == "O" and last[4:6] == ["T", "2"]  # adsorbate: free, tag 2
    with lzma.open(txt, "rt") as f:
        assert f.read() == "random5,frame9,-2.0\n"


def test_directory_of_files_prefers_uncompressed_and_natural_order(tmp_path, oc20_frames):
    frames = oc20_frames(3)
    write_s2ef_extxyz(tmp_path / "10.extxyz.xz", frames[2:], [3], [0], [0.0])
    write_s2ef_extxyz(tmp_path / "2.extxyz.xz", frames[:2], [1, 2], [0, 0], [0.0, 0.0])
    write_s2ef_extxyz(tmp_path / "2.extxyz", frames[:2], [1, 2], [0, 0], [0.0, 0.0])  # uncompress.py output
    dataset = open_dataset(tmp_path)
    assert [p.name for p in dataset.files] == ["2.extxyz", "10.extxyz.xz"]
    assert [dataset[k].sid for k in range(len(dataset))] == [1, 2, 3]


def test_missing_sidecar_names_the_file(tmp_path):
    (tmp_path / "4.extxyz").write_text(OC20_FRAME)
    with pytest.raises(FileNotFoundError, match=r"4\.extxyz: its sidecar 4\.txt .* is missing"):
        S2EFExtxyzDataset(tmp_path / "4.extxyz")


def test_sidecar_errors(tmp_path):
    (tmp_path / "0.extxyz").write_text(OC20_FRAME)
    (tmp_path / "0.txt").write_text("random1,frame0\n")
    with pytest.raises(DataFormatError, match=r"0\.txt: line 1: expected 'system_id,frame_number,reference_energy'"):
        S2EFExtxyzDataset(tmp_path / "0.extxyz")
    (tmp_path / "0.txt").write_text("random1,frame0,-1.0\nrandom1,frame1,-1.0\n")
    dataset = S2EFExtxyzDataset(tmp_path / "0.extxyz")  # counts are checked when the file is first read
    with pytest.raises(DataFormatError, match=r"0\.extxyz: holds 1 frames but its sidecar 0\.txt describes 2"):
        dataset[0]


def test_corrupt_frames_name_file_and_frame(tmp_path):
    truncated = OC20_FRAME + OC20_FRAME.splitlines(keepends=True)[0] + OC20_FRAME.splitlines(keepends=True)[1]
    (tmp_path / "0.extxyz").write_text(truncated)
    (tmp_path / "0.txt").write_text("random1,frame0,0.0\nrandom1,frame1,0.0\n")
    with pytest.raises(DataFormatError, match=r"0\.extxyz: frame 1 is truncated"):
        S2EFExtxyzDataset(tmp_path / "0.extxyz")[0]
    (tmp_path / "0.extxyz").write_text(OC20_FRAME + OC20_FRAME.replace("Pt       2.5", "Pt       x.5"))
    dataset = S2EFExtxyzDataset(tmp_path / "0.extxyz")
    assert dataset[0].natoms == 3
    with pytest.raises(DataFormatError, match=r"0\.extxyz: frame 1 cannot be parsed"):
        dataset[1]
    (tmp_path / "0.extxyz").write_text(OC20_FRAME + OC20_FRAME.replace(" energy=-12.50000000", ""))
    with pytest.raises(DataFormatError, match=r"0\.extxyz: frame 1: has no energy"):
        S2EFExtxyzDataset(tmp_path / "0.extxyz")[1]
    assert "energy" not in S2EFExtxyzDataset(tmp_path / "0.extxyz", with_targets=False)[1]


def test_unreadable_compressed_file(tmp_path):
    (tmp_path / "0.extxyz.xz").write_bytes(b"not xz data")
    (tmp_path / "0.txt.xz").write_bytes(lzma.compress(b"random1,frame0,0.0\n"))
    dataset = S2EFExtxyzDataset(tmp_path / "0.extxyz.xz")
    with pytest.raises(DataFormatError, match=r"0\.extxyz\.xz: cannot read"):
        dataset[0]
    (tmp_path / "1.extxyz").write_text(OC20_FRAME)
    (tmp_path / "1.txt.xz").write_bytes(b"not xz data")
    with pytest.raises(DataFormatError, match=r"1\.txt\.xz: cannot read"):
        S2EFExtxyzDataset(tmp_path / "1.extxyz")
