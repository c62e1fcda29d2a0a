"""A real Flower deployment on localhost for `multimodal-federate`: one ``flower-superlink``, one
``flower-supernode`` per client (each told its manifest through ``--node-config``), and ``flwr run`` submitting
the app in ``flower_app/`` (components in `multimodal.regimes.federated_app`). Everything is stopped after the
run; logs go to ``<output>/logs/``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from multimodal.files import write_text

APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flower_app")
# The folder holding the `multimodal` package: the Flower processes import it from there.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the SuperLink did not open port {port} within {timeout:.0f} s")


def run_federation(plan: dict[str, Any], rounds: int, strategy: str, proximal_mu: float, local_epochs: int,
                   output: str, timeout: float = 1800) -> dict[str, Any]:
    """Start a SuperLink and one SuperNode per client on localhost, run the app with ``flwr run``, stop them;
    returns the server's per-round report."""
    bin_dir = os.path.dirname(sys.executable)
    home = tempfile.mkdtemp(prefix="flwr-home-")
    serverappio, fleet, control, *clientappio = _free_ports(3 + len(plan["clients"]))
    write_text(os.path.join(home, "config.toml"),
               f'[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
               f'address = "127.0.0.1:{control}"\ninsecure = true\n')
    env = dict(os.environ, FLWR_HOME=home, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")  # the apps import this package
    logs = os.path.join(output, "logs")
    os.makedirs(logs, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str]) -> None:
        log = open(os.path.join(logs, f"{name}.log"), "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("superlink", [os.path.join(bin_dir, "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                            "--serverappio-api-address", f"127.0.0.1:{serverappio}",
                            "--fleet-api-address", f"127.0.0.1:{fleet}", "--control-api-address", f"127.0.0.1:{control}"])
        _wait_for_port(control, 60)
        for i, manifest in enumerate(plan["clients"]):
            start(f"supernode-{i}", [os.path.join(bin_dir, "flower-supernode"), "--insecure", "--superlink",
                                     f"127.0.0.1:{fleet}", "--clientappio-api-address", f"127.0.0.1:{clientappio[i]}",
                                     "--node-config", f'partition-id={i} data="{manifest}"'])
        run_config = (f'config="{plan["config"]}" output="{os.path.abspath(output)}" num-rounds={rounds} '
                      f'strategy="{strategy}" proximal-mu={proximal_mu} local-epochs={local_epochs} '
                      f'clients={len(plan["clients"])} validation="{plan["evaluation"]["validation"]}" '
                      f'test="{plan["evaluation"].get("test", "")}"')
        cmd = [os.path.join(bin_dir, "flwr"), "run", APP_DIR, "local-deployment", "--run-config", run_config, "--stream"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        write_text(os.path.join(logs, "flwr-run.log"), proc.stdout + proc.stderr)
        report_path = os.path.join(output, "rounds.json")
        if proc.returncode != 0 or not os.path.exists(report_path):
            raise RuntimeError(f"the Flower run failed (exit {proc.returncode}); logs in {logs}:\n"
                               + (proc.stdout + proc.stderr)[-2000:])
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            p.wait()
        shutil.rmtree(home, ignore_errors=True)
    with open(report_path, encoding="utf-8") as f:
        return json.load(f)
