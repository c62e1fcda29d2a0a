"""Progress bars: live on a terminal, and in a log or a pipe at most one plain line per interval plus a last one."""

from __future__ import annotations

import io

from tqdm import tqdm

from multimodal.progress import LineProgress, log_interval, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_last_line_for_a_short_loop(monkeypatch):
    monkeypatch.setenv("MULTIMODAL_PROGRESS_INTERVAL", "3600")
    log = io.StringIO()
    bar = progress_bar(total=500, desc="epoch 1", stream=log)
    assert isinstance(bar, LineProgress)
    for _ in range(500):
        bar.update(1)
        bar.set_postfix(loss=0.5)  # a refresh by hand is held back by the interval too
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    (line,) = text.splitlines()
    assert line.startswith("epoch 1: 500/500 [") and "loss=0.5" in line


def test_the_interval_spaces_the_lines(monkeypatch):
    monkeypatch.setenv("MULTIMODAL_PROGRESS_INTERVAL", "0")
    log = io.StringIO()
    for _ in progress_bar(range(5), desc="checking", stream=log):
        pass
    lines = log.getvalue().splitlines()
    assert len(lines) == 6 and lines[0].startswith("checking: 0/5") and lines[-1].startswith("checking: 5/5")
    monkeypatch.setenv("MULTIMODAL_PROGRESS_INTERVAL", "soon")
    assert log_interval() == 30.0


def test_a_terminal_keeps_the_live_bar():
    screen = _Terminal()
    bar = progress_bar(total=3, desc="epoch 1", stream=screen)
    assert isinstance(bar, tqdm) and not isinstance(bar, LineProgress)
    bar.update(3)
    bar.close()
    assert "\r" in screen.getvalue()  # a redrawn bar
    quiet = io.StringIO()
    progress_bar(total=3, stream=quiet, disable=True).close()
    assert quiet.getvalue() == ""
