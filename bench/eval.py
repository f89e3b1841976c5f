"""Evaluator throughput, each figure next to its baseline measured in the same run.

- local runner, tiny random LLaVA on CPU: items/s generating with batches of 8 vs one item at a time,
  and option-loss scoring with 16 sequences per forward pass vs one.
- openai backend against an OpenAI-compatible stub on 127.0.0.1 that answers after a fixed latency
  (a stand-in for a remote API): requests/s with 8 in flight vs 1.
- resume: seconds to read back a predictions.jsonl of N records (what a resumed run pays first).

  python bench/eval.py [--items 32] [--requests 48] [--latency 0.05] [--records 100000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype="uint8")).save(buf, "PNG")
    return buf.getvalue()


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_local(n_items: int, repeats: int, work: Path) -> None:
    from vlmforge.evaluation.items import EvalItem
    from vlmforge.evaluation.runners import LocalRunner
    from vlmforge.training.tiny import make_tiny_llava

    model = make_tiny_llava(work / "llava")
    items = [EvalItem(id=str(i), prompt=f"What is in the image? A. cat B. dog C. bird D. horse ({i})",
                      options=["cat", "dog", "bird", "horse"], image=_png(i)) for i in range(n_items)]
    runner = LocalRunner(str(model), max_new_tokens=8)
    runner.setup()

    def gen(bs: int):
        runner.batch_size = bs
        return lambda: [runner.generate(items[i : i + bs]) for i in range(0, len(items), bs)]

    def loss(bs: int):
        def run():
            runner.batch_size = bs
            runner.option_losses(items)
        return run

    print(f"local runner, tiny LLaVA, {n_items} items, CPU (median of {repeats})")
    for label, one, many in (("generate", gen(1), gen(8)), ("loss over 4 options", loss(1), loss(16))):
        t1, t8 = _timed(one, repeats), _timed(many, repeats)
        print(f"  {label:20s} batched {n_items / t8:7.1f} items/s | one at a time {n_items / t1:7.1f} items/s | x{t1 / t8:.2f}")


class _Stub(BaseHTTPRequestHandler):
    latency = 0.05

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.latency)
        data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def bench_api(n_requests: int, latency: float, repeats: int) -> None:
    from vlmforge.curation.generation import GenerationRequest
    from vlmforge.curation.generation.openai import OpenAIGenerator

    _Stub.latency = latency
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    reqs = [GenerationRequest(prompt="<image>\nIs there a dog?", image=_png(i)) for i in range(n_requests)]
    print(f"openai backend, {n_requests} requests with images, stub latency {latency * 1000:.0f} ms (median of {repeats})")
    rates = {}
    for conc in (1, 8):
        gen = OpenAIGenerator(model="stub", base_url=url, concurrency=conc, api_key_env="BENCH_NO_KEY")
        gen.setup()
        rates[conc] = n_requests / _timed(lambda: gen(reqs), repeats)
        gen.close()
    print(f"  concurrency 8 {rates[8]:7.1f} req/s | concurrency 1 {rates[1]:7.1f} req/s | x{rates[8] / rates[1]:.2f}")
    httpd.shutdown()


def bench_resume(n_records: int, work: Path) -> None:
    from vlmforge.evaluation.predictions import PredictionLog

    log = PredictionLog(work / "predictions.jsonl")
    rec = {"answer": 1, "options": ["cat", "dog", "bird", "horse"], "meta": {"class": "dog"}, "scoring": "generate",
           "prediction": "The answer is B.", "parsed": 1, "status": "ok"}
    for start in range(0, n_records, 10_000):
        log.append({**rec, "id": f"item{i}"} for i in range(start, min(start + 10_000, n_records)))
    t = time.perf_counter()
    done = log.load()
    dt = time.perf_counter() - t
    size = log.path.stat().st_size / 1e6
    print(f"resume: read back {len(done):,} records ({size:.1f} MB) in {dt:.2f} s ({len(done) / dt:,.0f} records/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_local(args.items, args.repeats, work)
        bench_api(args.requests, args.latency, args.repeats)
        bench_resume(args.records, work)


if __name__ == "__main__":
    main()
