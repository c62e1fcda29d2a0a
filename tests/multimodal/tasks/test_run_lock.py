"""Two runs never both write one output folder: the main process of a run holds an OS lock on it, a second run is
refused with the holder's PID and start time, a killed run's lock is taken over, and a folder that cannot be written
(read-only, disk full) is a one-line error naming it, with nothing half-written left as a result."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from multimodal import load_config, run
from multimodal.tasks.run_folder import HOLDER_NAME, OutputFolderError, hold_output_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
def _hold(out: str, conn) -> None:
    """In a forked child: hold the lock of `out` until killed."""
    import time

    with hold_output_dir(out):
        conn.send("held")
        time.sleep(600)


@pytest.fixture
def holder(tmp_path):
    """A process that holds the lock of tmp_path/out until it is killed (forked: it inherits the imports, where a
    fresh interpreter would spend ~7 s on them)."""
    import multiprocessing

    out = str(tmp_path / "out")
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    proc = context.Process(target=_hold, args=(out, send), daemon=True)
    proc.start()
    assert receive.poll(120) and receive.recv() == "held"
    yield out, proc
    if proc.is_alive():
        proc.kill()
    proc.join(60)


def test_a_second_run_is_refused_with_the_holders_pid_and_a_killed_holders_lock_is_taken_over(holder):
    out, proc = holder
    # Encoders that cannot be built: were the lock not to refuse the run, it would fail there, fast, not train.
    cfg = load_config(None, ["data.demo=text_image", "data.demo_size=40", f"train.output_dir={out}",
                             "model.encoders={text: 'text:/nonexistent/encoder'}", "data.image_column=null"])
    with pytest.raises(OutputFolderError, match=rf"is in use by another run \(pid {proc.pid} on "
                                                rf"{socket.gethostname()}, started 20\d\d-\d\d-\d\d "):
        run(cfg)
    assert sorted(os.listdir(out)) == [".run.lock", HOLDER_NAME]  # no config.yaml, splits or model of the second run
    os.kill(proc.pid, signal.SIGKILL)  # the holder dies without releasing: the kernel drops its lock
    proc.join(60)
    notes = []
    with hold_output_dir(out, log=notes.append):
        assert f"pid {proc.pid}" in notes[0] and "ended without releasing it" in notes[0]
    assert not os.path.exists(os.path.join(out, HOLDER_NAME))  # released cleanly this time
    with hold_output_dir(out, log=notes.append):
        assert len(notes) == 1


def test_a_folder_the_run_cannot_write_is_a_one_line_error_naming_it(tmp_path):
    """A read-only parent (as an ordinary user), or a place nobody may create folders in (/sys, also as root)."""
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    out = parent / "out" if os.geteuid() != 0 else "/sys/multimodal-run-lock-test/out"  # root ignores chmod
    try:
        cfg = load_config(None, ["data.demo=text_image", f"train.output_dir={out}"])
        with pytest.raises(OutputFolderError, match=r"train.output_dir '.*/out': cannot write '.*': "
                                                    r"(Permission denied|Operation not permitted)"):
            run(cfg)
    finally:
        parent.chmod(0o755)


def _write_under_a_size_limit(out: str, conn) -> None:
    """In a forked child: a file-size limit (as a full disk would refuse writes), then a result written in the lock."""
    import resource

    from multimodal.files import write_json

    with hold_output_dir(out):
        pass  # the lock files exist before the limit
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    try:
        with hold_output_dir(out):
            write_json(os.path.join(out, "metrics.json"), {"values": list(range(10000))})
        conn.send("no error")
    except OutputFolderError as err:
        conn.send(str(err))
    conn.close()


def test_a_full_disk_while_writing_results_leaves_no_result(tmp_path):
    """A write the file system refuses half-way (here a file-size limit, as a full disk would) ends the run with an
    `OutputFolderError`, and the result file it was writing does not exist (written to a temporary, then renamed).
    The limit is set in a forked child, which inherits the imports (a fresh interpreter would spend ~7 s on them)."""
    import multiprocessing

    out = tmp_path / "out"
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_write_under_a_size_limit, args=(str(out), send))
    child.start()
    message = receive.recv() if receive.poll(120) else "no answer"
    child.join(60)
    assert child.exitcode == 0
    assert message.startswith(f"train.output_dir {str(out)!r}: cannot write") and "File too large" in message, message
    assert sorted(os.listdir(out)) == [".run.lock"]  # no metrics.json, no temporary file, holder record removed
