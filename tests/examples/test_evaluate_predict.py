"""examples/train_oc20.py --evaluate and --predict: a checkpoint evaluated without training gives
the run's own validation numbers; predictions in OC20's S2EF submission format match a direct
evaluation, and an interrupted prediction continues to the same file."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from so2nn.data import open_dataset
from so2nn.models import load_model
from so2nn.training import write_predictions

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_oc20.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_oc20_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(example, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    common = ["--tiny", "--emt-systems", "6", "3", "--cache-dir", str(root / "data"), "--no-progress", "--threads", "1"]
    metrics = example.main([*common, "--out", str(root / "run"), "--max-steps", "8", "--eval-every", "8",
                            "--batch-size", "4", "--warmup-steps", "2", "--no-plot"])
    return root, common, metrics


def test_evaluate_gives_the_runs_validation_numbers(example, run, capsys):
    root, common, metrics = run
    assert json.loads((root / "run" / "metrics.json").read_text()) == metrics
    capsys.readouterr()
    evaluated = example.main([*common, "--evaluate", str(root / "run" / "model.pt")])
    assert evaluated.keys() == metrics.keys()
    for key, value in metrics.items():
        assert evaluated[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    printed = capsys.readouterr().out
    assert "energy baseline" in printed and "the training run's mean" in printed, printed
    assert "force MAE" in printed and "EFwT" in printed, printed


def test_predict_writes_the_submission_format(example, run):
    root, common, _ = run
    path = root / "predictions.npz"
    example.main([*common, "--predict", str(root / "run" / "model.pt"), "--predictions", str(path),
                  "--prediction-dtype", "float32"])
    result = np.load(path)
    assert sorted(result.files) == ["chunk_idx", "energy", "forces", "ids"]
    assert result["energy"].dtype == np.float32 and result["chunk_idx"].dtype == np.int64
    # a direct evaluation of the same model, frame by frame
    model = load_model(root / "run" / "model.pt").eval()
    val = open_dataset(example.embedded_paths(example.parse_args(common))[1])
    direct = {}
    for item in val:
        out = model(Batch.from_data_list([item]))
        direct[f"{item.sid}_{item.fid}"] = (float(out["energy"].detach()[0]),
                                            out["forces"].detach()[~item.fixed].numpy())
    assert result["ids"].tolist() == sorted(direct)
    chunks = np.split(result["forces"], result["chunk_idx"])
    assert len(chunks) == len(direct)
    for system, energy, forces in zip(result["ids"], result["energy"], chunks):
        assert energy == pytest.approx(direct[system][0], rel=1e-4, abs=1e-4)
        np.testing.assert_allclose(forces, direct[system][1], rtol=1e-4, atol=1e-5)


def test_an_interrupted_predict_continues_to_the_same_file(example, run, capsys):
    root, common, _ = run
    checkpoint = str(root / "run" / "model.pt")
    whole, pieces = root / "whole.npz", root / "pieces.npz"
    example.main([*common, "--predict", checkpoint, "--predictions", str(whole), "--eval-batch-size", "4"])
    stopped = example.main([*common, "--predict", checkpoint, "--predictions", str(pieces), "--eval-batch-size", "4",
                            "--stop-after", "2"])
    assert stopped == {"predictions": None} and not pieces.exists()
    assert (root / "pieces.partial.npz").exists()
    # another batch size would batch differently: the partial file is refused, not mixed in
    with pytest.raises(SystemExit) as stop:  # a usage error: one line, exit status 2
        example.main([*common, "--predict", checkpoint, "--predictions", str(pieces), "--eval-batch-size", "5"])
    assert stop.value.code == 2
    assert re.search("error: --predictions: .*: partial predictions of another model, dataset or options",
                     capsys.readouterr().err)
    example.main([*common, "--predict", checkpoint, "--predictions", str(pieces), "--eval-batch-size", "4"])
    assert not (root / "pieces.partial.npz").exists()
    a, b = np.load(whole), np.load(pieces)
    assert a["energy"].dtype == np.float16  # OC20's submission precision by default
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


class _Crashing(torch.utils.data.Dataset):
    """A dataset whose item ``at`` fails once: a job killed mid-way."""

    def __init__(self, dataset, at):
        self.dataset, self.at, self.crashed = dataset, at, False

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        if index == self.at and not self.crashed:
            self.crashed = True
            raise KeyboardInterrupt
        return self.dataset[index]


def test_a_crashed_predict_restarts_where_it_saved(example, run, tmp_path):
    root, common, _ = run
    model = load_model(root / "run" / "model.pt")
    val = open_dataset(example.embedded_paths(example.parse_args(common))[1])
    reference = write_predictions(model, val, tmp_path / "reference.npz", batch_size=3)
    crashing = _Crashing(val, at=10)
    with pytest.raises(KeyboardInterrupt):
        write_predictions(model, crashing, tmp_path / "crashed.npz", batch_size=3, save_every=1)
    with np.load(tmp_path / "crashed.partial.npz") as partial:
        assert len(partial["ids"]) == 9  # three whole batches saved before the crash
    restarted = write_predictions(model, crashing, tmp_path / "crashed.npz", batch_size=3, save_every=1)
    a, b = np.load(reference), np.load(restarted)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


def test_evaluate_and_predict_an_official_checkpoint(example, run, tmp_path):
    """A fairchem-format checkpoint (the parity fixture's, small perturbed weights) through both."""
    from so2nn.models import EquiformerV2
    from so2nn.training import evaluate_model

    root, common, _ = run
    fixture = Path(__file__).resolve().parents[1] / "models" / "fixtures" / "eqv2_31M_slab.pt"
    checkpoint = tmp_path / "fairchem.pt"
    torch.save(torch.load(fixture, weights_only=False, map_location="cpu")["checkpoint"], checkpoint)
    subset = [*common, "--val-subset", "4"]
    evaluated = example.main([*subset, "--evaluate", str(checkpoint)])
    val = torch.utils.data.Subset(open_dataset(example.embedded_paths(example.parse_args(common))[1]), range(4))
    model = EquiformerV2.from_fairchem(checkpoint)
    assert evaluated == evaluate_model(model, val, energy_baseline=model.target_statistics.energy_mean)
    example.main([*subset, "--predict", str(checkpoint), "--predictions", str(tmp_path / "p.npz")])
    assert len(np.load(tmp_path / "p.npz")["ids"]) == 4


def test_command_line_mistakes_are_one_line_errors(example, run, tmp_path, capsys):
    """Each mistake: exit status 2 and argparse's one line (the usage, then ``prog: error: ...``),
    before any work is done; no traceback."""
    root, common, _ = run
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.pt").write_text("my notes\n")
    model = (root / "run" / "model.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(model[: len(model) // 2])
    gpu = [] if torch.cuda.is_available() else [
        (["--device", "cuda"],
         r"--device cuda: (this torch was built without CUDA|no GPU is visible); this machine has: cpu")]
    for argv, message in [
        *gpu,
        (["--device", "gpu"], "--device 'gpu' is not a torch device name"),
        (["--max-steps", "-5"], r"argument --max-steps: -5 is not a positive integer \(>= 1\)"),
        (["--lr", "0"], "argument --lr: 0 is not a positive number"),
        (["--data", str(tmp_path / "empty"), "--val-data", str(tmp_path / "empty")],
         "--data: .*empty: the directory holds no dataset files"),
        (["--data", str(tmp_path / "missing"), "--val-data", str(tmp_path / "missing")], "--data: .*missing"),
        (["--evaluate", str(tmp_path / "notes.pt")], r"--evaluate: could not read checkpoint .*notes.pt: not a PyTorch "
                                                     r"checkpoint \(it looks like text\), starting 'my notes'"),
        (["--init", str(tmp_path / "half.pt")], r"--init: could not read checkpoint .*half.pt: the file is truncated "
                                                r"or damaged"),
        (["--evaluate", str(tmp_path / "none.pt")], "--evaluate: no checkpoint at"),
        (["--batch-size", "100"], "the training set has 60 items, fewer than one batch per process"),
        (["--set", "lmax=four"], "--set 'lmax=four': 'four' is not a JSON value"),
        (["--data", str(tmp_path / "empty"), "--valid-fraction", "0.1", "--no-stress", "--stress-key", "REF_stress"],
         "--no-stress reads no stress: give no --stress-key or --virial-key with it"),
        (["--data", str(tmp_path / "missing"), "--valid-fraction", "1.5"],
         r"argument --valid-fraction: 1.5 is not a fraction between 0 and 1 \(exclusive\)"),
        (["--clip-grad-norm", "-1"], "argument --clip-grad-norm: -1 is not a positive number"),
        (["--energy-coefficient", "-4"], r"argument --energy-coefficient: -4 is not a non-negative number \(>= 0\)"),
        (["--weight-decay", "-1"], r"argument --weight-decay: -1 is not a non-negative number \(>= 0\)"),
        (["--cache-dir", str(tmp_path / "notes.pt")], "--cache-dir .*notes.pt is a file, not a directory"),
        (["--cache-dir", str(tmp_path / "notes.pt" / "data")],
         "--cache-dir .*data: cannot write the embedded dataset there"),
    ]:
        with pytest.raises(SystemExit) as stop:
            example.main([*(a for a in common if a != "--tiny"), "--out", str(tmp_path / "out"), *argv])
        err = capsys.readouterr().err
        assert stop.value.code == 2, (argv, err)
        assert "Traceback" not in err and re.fullmatch(rf"\S+: error: {message}.*", err.splitlines()[-1],
                                                       re.S), (argv, err)
