"""Progress bars: live on a terminal, one plain line per interval (and a last one) in a log or a pipe."""

from __future__ import annotations

import io

from tqdm import tqdm

from multimodal.progress import LineProgress, log_interval, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_not_redraws(monkeypatch):
    monkeypatch.setenv("MULTIMODAL_PROGRESS_INTERVAL", "3600")
    log = io.StringIO()
    bar = progress_bar(total=500, desc="epoch 1", stream=log)
    assert isinstance(bar, LineProgress)
    for _ in range(500):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1: 0/500") and lines[1].startswith("epoch 1: 500/500")


def test_the_interval_spaces_the_lines(monkeypatch):
    monkeypatch.setenv("MULTIMODAL_PROGRESS_INTERVAL", "0")
    log = io.StringIO()
    for _ in progress_bar(range(5), desc="checking", stream=log):
        pass
    assert len(log.getvalue().splitlines()) == 6  # the start, then one per item when the interval is 0
    monkeypatch.setenv("MULTIMODAL_PROGRESS_INTERVAL", "soon")
    assert log_interval() == 30.0


def test_a_terminal_keeps_the_live_bar():
    screen = _Terminal()
    bar = progress_bar(total=3, desc="epoch 1", stream=screen)
    assert isinstance(bar, tqdm) and not isinstance(bar, LineProgress)
    bar.update(3)
    bar.close()
    assert "\r" in screen.getvalue()  # a redrawn bar
    assert progress_bar(total=3, stream=io.StringIO(), disable=True).disable
