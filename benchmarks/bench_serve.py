"""Load test of ``multimodal-serve`` on loopback: latency percentiles and requests/s for N requests from C concurrent
clients (each request one JSON instance: a caption and a base64 PNG from the test split), then bad requests of
every kind, which must all be answered 4xx while the server keeps serving.

    python benchmarks/bench_serve.py --model /tmp/bench_deploy/text_image_classification-onnx --requests 2000 --clients 8

The server runs as its CLI in a subprocess (``python -m multimodal.deploy.server``), stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
from common import print_table, write_json  # noqa: E402

from multimodal.data.manifest import read_manifest  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, payloads: list[dict], n: int, clients: int) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            start = time.perf_counter()
            try:
                r = await client.post("/predict", json=payloads[i % len(payloads)])
                code = r.status_code
            except httpx.HTTPError:
                code = -1
            latencies.append(time.perf_counter() - start)
            statuses[code] = statuses.get(code, 0) + 1

    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*[worker(client) for _ in range(clients)])
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {"clients": clients, "requests": n, "ok": statuses.get(200, 0), "failed": n - statuses.get(200, 0),
            "p50 ms": 1000 * q[49], "p90 ms": 1000 * q[89], "p99 ms": 1000 * q[98], "requests/s": n / wall}


def bad_requests(url: str, good: dict) -> dict:
    cases = {
        "corrupt image bytes": dict(json={"text": "x", "image": base64.b64encode(b"not an image").decode()}),
        "invalid base64": dict(json={"image": "%%%"}),
        "unknown field": dict(json={"caption": "x"}),
        "wrong type": dict(json={"text": 5}),
        "not JSON": dict(content=b"{", headers={"content-type": "application/json"}),
        "too large": dict(json={"text": "x" * (11 * 2**20)}),
        "wrong content type": dict(content=b"x", headers={"content-type": "text/plain"}),
        "empty instance": dict(json={}),
    }
    out = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, kwargs in cases.items():
            codes = [client.post("/predict", **kwargs).status_code for _ in range(25)]
            out[name] = {"sent": len(codes), "4xx": sum(400 <= c < 500 for c in codes), "codes": sorted(set(codes))}
        out["after: health"] = client.get("/health").status_code
        out["after: good request"] = client.post("/predict", json=good).status_code
        out["batching stats"] = client.get("/metadata").json()["server"]["stats"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder to serve (PyTorch or exported)")
    parser.add_argument("--data", default=None, help="test manifest (default: the training run's splits/test.csv)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=300, help="requests from one client first (no batching)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    load_start = os.getloadavg()
    data = args.data
    if data is None:
        import json

        source = json.load(open(os.path.join(args.model, "deploy.json")))["source"].get("model_dir", args.model) \
            if os.path.exists(os.path.join(args.model, "deploy.json")) else args.model
        data = os.path.join(os.path.dirname(source), "splits", "test.csv")
    rows = read_manifest(data)
    base = os.path.dirname(os.path.abspath(data))
    payloads = []
    for r in rows:
        with open(os.path.join(base, r["image"]), "rb") as f:
            payloads.append({"text": r["text"], "image": base64.b64encode(f.read()).decode()})
    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    server = subprocess.Popen([sys.executable, "-m", "multimodal.deploy.server", "--model", args.model, "--port", str(port),
                               "--max-wait-ms", str(args.max_wait_ms)], cwd=root,
                              env=dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", "")))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not start")
        asyncio.run(load(url, payloads, 20, 2))  # warm-up
        runs = [asyncio.run(load(url, payloads, args.sequential, 1)), asyncio.run(load(url, payloads, args.requests,
                                                                                       args.clients))]
        print_table("Load test, loopback", runs, list(runs[0]))
        bad = bad_requests(url, payloads[0])
        print("\nbad requests:")
        for k, v in bad.items():
            print(f"  {k}: {v}")
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"\nload average (1, 5, 15 min): start {load_start}, end {os.getloadavg()} on {os.cpu_count()} cores")
    write_json(args.json, {"load": runs, "bad": bad, "args": vars(args), "load_average": {"start": load_start, "end": os.getloadavg()}})


if __name__ == "__main__":
    main()
