"""Benchmark: `hcp serve` on the embedded default model.

1. Latency: POST /score against scoring the same transcript in process with a warm model (same seed, so the
   same answer and the same tokens), interleaved so that both see the same machine load. Aim: at most 1.05x.
2. Concurrency: 16 clients at once, each with its own transcript, against a server whose queue holds fewer
   (--queue 8): the embedded backend rates one at a time, requests beyond the queue get 503 with Retry-After
   and try again. Every client must get exactly one answer, for its own transcript (its prompt token count
   matches the one counted here), the server must count exactly 16 ratings, the queue must never hold more than
   its limit, and the server's resident memory must stay flat.

The server runs as `hcp serve` in a process of its own (benchlib's hcp_command), as a user starts it.

    .venv/bin/python scripts/bench_serve.py --threads 2
    .venv/bin/python scripts/bench_serve.py --threads 1 --runs 2 --clients 8

llama.cpp threads spin while they wait: run it on a quiet machine, never beside another llama.cpp process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from benchlib import hcp_command

TRANSCRIPT = ("RD: Hello, I'm the dietitian. How have meals been since our last visit?\n"
              "Patient: Not great. I keep skipping breakfast and then I'm starving by noon.\n"
              "RD: That's common, and it's fixable. Could you keep a yogurt and a piece of fruit at work?\n"
              "Patient: I think so.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for process {pid}")


def counter(metrics: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", metrics, re.M)
    return float(match.group(1)) if match else 0.0


class Server:
    """`hcp serve` in a child process on 127.0.0.1."""

    def __init__(self, threads: int, queue: int, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--port", str(self.port), "--backend", "llama-cpp", "--threads", str(threads),
                "--queue", str(queue), "--reviews", str(work / "reviews.jsonl"), "--work-dir", str(work)]
        self.log = (work / "server.log").open("w")
        self.process = subprocess.Popen(hcp_command(args), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"hcp serve did not start; its log: {work / 'server.log'}")
            time.sleep(0.2)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def latency(server: Server, runs: int, threads: int) -> dict[str, float]:
    from hcp.config import load_config
    from hcp.rubric import Rubric
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend
    from hcp.scoring.score import ScoreOptions, score_transcript

    config = load_config()
    rubric = Rubric.from_config(config)
    options = ScoreOptions(seed=7, temperature=config.model.temperature, num_ctx=config.model.num_ctx,
                           repeat_penalty=config.model.repeat_penalty)
    backend = LlamaCppBackend(None, num_ctx=config.model.num_ctx, threads=threads)
    client = httpx.Client(base_url=server.url, timeout=None)
    try:
        local = score_transcript(TRANSCRIPT, backend, rubric, options)  # warm: the model and the rubric's prefix
        remote = client.post("/score", json={"transcript": TRANSCRIPT, "seed": 7}).json()
        if remote["rating"] != local.rating:
            raise SystemExit("the server's rating differs from the in-process one for the same seed")
        in_process, over_http = [], []
        for _ in range(runs):
            started = time.perf_counter()
            score_transcript(TRANSCRIPT, backend, rubric, options)
            in_process.append(time.perf_counter() - started)
            started = time.perf_counter()
            answer = client.post("/score", json={"transcript": TRANSCRIPT, "seed": 7})
            over_http.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
        counts = [backend.count_prompt_tokens(rubric.messages(transcript_for(i))) for i in range(64)]
    finally:
        backend.close()
        client.close()
    local_s, http_s = statistics.median(in_process), statistics.median(over_http)
    return {"in_process_s": local_s, "http_s": http_s, "ratio": http_s / local_s, "output_tokens": local.output_tokens,
            "prompt_counts": counts}


def transcript_for(client: int) -> str:
    """Each client's own transcript: a different length, so its prompt token count says whose answer it is."""
    return TRANSCRIPT + "\nRD: Any questions?" + " Okay." * client + "\nPatient: No, thanks."


def concurrency(server: Server, clients: int, prompt_counts: list[int]) -> dict[str, object]:
    before_metrics = httpx.get(server.url + "/metrics").text
    rss_before = rss_mb(server.process.pid)
    answers: dict[int, list[dict]] = {i: [] for i in range(clients)}
    refused = [0] * clients
    peak = [0]
    done = threading.Event()

    def client(i: int) -> None:
        # No client timeout: on a loaded machine a client at the back of the queue waits many ratings' time.
        with httpx.Client(base_url=server.url, timeout=None) as http:
            while True:
                response = http.post("/score", json={"transcript": transcript_for(i), "seed": 7})
                if response.status_code == 503:
                    refused[i] += 1
                    time.sleep(float(response.headers["Retry-After"]))
                    continue
                assert response.status_code == 200, response.text
                answers[i].append(response.json())
                return

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], httpx.get(server.url + "/health").json()["queue"]["waiting"])
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    after_metrics = httpx.get(server.url + "/metrics").text
    health = httpx.get(server.url + "/health").json()
    rated = (counter(after_metrics, "hcp_ratings_total", source="score", status="ok")
             - counter(before_metrics, "hcp_ratings_total", source="score", status="ok"))
    own = sum(1 for i, got in answers.items() if len(got) == 1 and got[0]["prompt_tokens"] == prompt_counts[i])
    return {"clients": clients, "seconds": seconds, "answered_once": sum(len(a) == 1 for a in answers.values()),
            "answered_own_transcript": own, "server_rated": int(rated), "refused_503": sum(refused),
            "queue_limit": health["queue"]["limit"], "queue_peak_polled": peak[0],
            "queue_peak_server": health["queue"]["peak"], "rss_before_mb": rss_before,
            "rss_after_mb": rss_mb(server.process.pid)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (server and in process)")
    parser.add_argument("--runs", type=int, default=3, help="timed ratings each way for the latency")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queue", type=int, default=8, help="the server's --queue (fewer than the clients)")
    args = parser.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hcp-bench-serve-") as folder:
        server = Server(args.threads, args.queue, Path(folder))
        try:
            timing = latency(server, args.runs, args.threads)
            prompt_counts = timing.pop("prompt_counts")
            print(f"latency: {json.dumps(timing)}", flush=True)
            load = concurrency(server, args.clients, prompt_counts)
        finally:
            server.close()
    report = {"threads": args.threads, "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "cpus": os.cpu_count(), "latency": timing, "concurrency": load}
    print(json.dumps(report, indent=2))
    print(f"/score {timing['http_s']:.2f} s vs in process {timing['in_process_s']:.2f} s: "
          f"{timing['ratio']:.3f}x (median of {args.runs})")
    print(f"{load['clients']} clients: {load['answered_once']} answered once, {load['answered_own_transcript']} with "
          f"their own transcript's rating, server rated {load['server_rated']}, {load['refused_503']} refusals "
          f"(503, retried), queue peak {load['queue_peak_server']} <= {load['queue_limit']}, RSS "
          f"{load['rss_before_mb']:.0f} -> {load['rss_after_mb']:.0f} MB, {load['seconds']:.0f} s "
          f"({load['seconds'] / args.clients:.1f} s a rating)")
    ok = (load["answered_once"] == load["answered_own_transcript"] == load["server_rated"] == args.clients
          and load["queue_peak_server"] <= load["queue_limit"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
