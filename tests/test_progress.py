"""The progress of a long phase, without tqdm: a plain line every few seconds on standard error."""

import builtins

from so2nn import _progress


def test_without_tqdm_a_line_every_few_seconds(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    clock = iter(range(0, 1000, 4))  # each look at the clock: 4 s later
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: next(clock))
    bar = _progress.progress_bar(5, "generating", "system")
    assert isinstance(bar, _progress._Lines)
    bar.set_postfix_str("loss 0.1")
    for _ in range(5):
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("generating: ") and "/5 systems" in line for line in lines), lines
    assert lines[-1].startswith("generating: 5/5 systems") and lines[-1].endswith("loss 0.1"), lines
    assert _progress.progress_bar(5, "x", enabled=False) is None
