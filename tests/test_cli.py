"""so2nn.cli: threads from the free cores, the device check, argparse-style usage errors."""

import argparse
import os
import subprocess
import sys

import pytest
import torch

from so2nn import cli


def test_free_cores_counts_the_idle_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(cli, "_usable_cores", lambda: 2)
    for idle, free in [(2.0, 2), (1.6, 2), (1.4, 1), (0.9, 1), (0.0, 1)]:  # at least 1, rounded to whole cores
        monkeypatch.setattr(cli, "_idle_cores", lambda cpus, seconds=0.2, idle=idle: idle)
        assert cli.free_cores() == free
    # without /proc/stat: the cores minus the load average
    monkeypatch.setattr(cli, "_idle_cores", lambda cpus, seconds=0.2: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert cli.free_cores() == 1


def test_idle_cores_reads_a_share_per_core():
    cpus = os.sched_getaffinity(0)
    idle = cli._idle_cores(cpus, seconds=0.05)
    assert idle is None or 0.0 <= idle <= len(cpus) + 1e-9


def test_set_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert cli.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(cli, "free_cores", lambda: 2)
        assert cli.set_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it: torch's own count stays
        torch.set_num_threads(1)
        assert cli.set_threads() == 1
        with pytest.raises(cli.UsageError, match="--threads must be >= 1"):
            cli.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_check_device_names_what_exists():
    assert cli.check_device("cpu") == torch.device("cpu")
    assert cli.check_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(cli.UsageError, match=r"--device 'gpu' is not a torch device name; this machine has: cpu"):
        cli.check_device("gpu")
    with pytest.raises(cli.UsageError, match="--device meta: so2nn's programs run on cpu or cuda"):
        cli.check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(cli.UsageError,
                           match=r"--device cuda: (this torch was built without CUDA|no GPU is visible); "
                                 r"this machine has: cpu"):
            cli.check_device("cuda")
    else:
        with pytest.raises(cli.UsageError, match="there is no GPU 999"):
            cli.check_device("cuda:999")


def test_argument_types_and_usage_errors(capsys):
    parser = argparse.ArgumentParser(prog="prog")
    parser.add_argument("--steps", type=cli.positive_int)
    parser.add_argument("--workers", type=cli.non_negative_int)
    parser.add_argument("--lr", type=cli.positive_float)
    parser.add_argument("--decay", type=cli.non_negative_float)
    parser.add_argument("--split", type=cli.fraction)
    cli.add_threads_argument(parser)
    assert vars(parser.parse_args(["--steps", "3", "--workers", "0", "--lr", "1e-3", "--threads", "1", "--decay", "0",
                                   "--split", "0.1"])) == \
        {"steps": 3, "workers": 0, "lr": 1e-3, "threads": 1, "decay": 0.0, "split": 0.1}
    for argv, message in [(["--steps", "-5"], "argument --steps: -5 is not a positive integer (>= 1)"),
                          (["--steps", "x"], "argument --steps: 'x' is not an integer"),
                          (["--workers", "-1"], "argument --workers: -1 is not a non-negative integer (>= 0)"),
                          (["--lr", "nan"], "argument --lr: nan is not a positive number"),
                          (["--decay", "-1"], "argument --decay: -1 is not a non-negative number (>= 0)"),
                          (["--decay", "inf"], "argument --decay: inf is not a non-negative number (>= 0)"),
                          (["--split", "1.5"], "argument --split: 1.5 is not a fraction between 0 and 1 (exclusive)"),
                          (["--split", "0"], "argument --split: 0 is not a fraction between 0 and 1 (exclusive)"),
                          (["--split", "half"], "argument --split: 'half' is not a number"),
                          (["--threads", "0"], "argument --threads: 0 is not a positive integer (>= 1)")]:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"prog: error: {message}"
    with pytest.raises(SystemExit) as stop, cli.usage_errors(parser):
        raise cli.UsageError("--data runs/x: the directory holds no dataset files")
    assert stop.value.code == 2
    assert (capsys.readouterr().err.splitlines()[-1]
            == "prog: error: --data runs/x: the directory holds no dataset files")
    with pytest.raises(SystemExit) as stop, cli.usage_errors():
        raise cli.UsageError("no model")
    assert stop.value.code == 2 and capsys.readouterr().err.endswith("error: no model\n")
    with pytest.raises(KeyError), cli.usage_errors(parser):  # anything else is not the user's mistake: it passes
        raise KeyError("x")


def test_a_usage_error_is_one_line_without_a_traceback():
    code = ("from so2nn.cli import UsageError, usage_errors\n"
            "with usage_errors():\n    raise UsageError('--checkpoint: no checkpoint file at x.pt')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert result.stderr == "-c: error: --checkpoint: no checkpoint file at x.pt\n", result.stderr


def test_an_interrupt_is_one_line_and_exit_status_130(capsys):
    kept = ["nothing yet"]
    with pytest.raises(SystemExit) as exit_:
        with cli.exit_on_interrupt(lambda: kept[0]):
            kept[0] = "the checkpoint of step 3"  # read when the interrupt comes, not before
            raise KeyboardInterrupt
    assert exit_.value.code == 130
    assert capsys.readouterr().out.strip() == "interrupted (SIGINT): the checkpoint of step 3"
    with cli.exit_on_interrupt("unused"):  # without an interrupt: nothing happens
        pass
