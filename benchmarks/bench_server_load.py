"""Policy server under abuse: a well-behaved client's latency while another client sends bad frames in a loop.

The server (``evaluate.serve_policy.PolicyServer``) runs in a subprocess, so that its memory is measured alone,
around :class:`SleepPolicy`: the real observation checks (:func:`evaluate.policy.validate_observation`) and a
fixed sleep in place of the model. The good client sends three 480x640 cameras per request, one request at a
time; the bad client cycles through :func:`bad_frames` (oversized frames, one over the hard ceiling that closes
its connection, msgpack bombs, garbage, over-long prompts, empty and over-wide images, ...), waiting for each answer
and reconnecting when the server closes its connection. Rows: the good client alone, then under that load.

    .venv/bin/python benchmarks/bench_server_load.py [--seconds 10] [--infer_ms 10] [--max_message_mb 8]

``tests/test_server_hardening.py`` runs the same load in-process, smaller and shorter.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.frames import CloseCode  # noqa: E402
from websockets.sync.client import ClientConnection, connect  # noqa: E402

from evaluate import msgpack_numpy  # noqa: E402
from evaluate.policy import ObservationLimits, validate_observation  # noqa: E402

TIMEOUT_S = 30.0


class SleepPolicy:
    """A stand-in for :class:`evaluate.policy.DexVLAPolicy`: its observation checks, then ``infer_s`` of sleep.

    ``actions`` is ``2 * state`` repeated ``chunk`` times, so that a reply can be checked against its request.
    """

    def __init__(self, camera_names: list[str], state_dim: int = 14, infer_s: float = 0.01, chunk: int = 8) -> None:
        self.camera_names, self.state_dim, self.infer_s, self.chunk = camera_names, state_dim, infer_s, chunk
        self.limits = ObservationLimits()
        self.metadata = {"camera_names": camera_names, "state_dim": state_dim, "action_dim": state_dim,
                         "chunk_size": chunk}

    def prepare(self, obs: Any) -> np.ndarray:
        _, state, _ = validate_observation(obs, self.camera_names, self.state_dim, limits=self.limits)
        return state

    def infer_prepared(self, state: np.ndarray) -> dict[str, Any]:
        time.sleep(self.infer_s)
        return {"actions": np.tile(2 * state, (self.chunk, 1)), "reasoning": ""}

    def infer(self, obs: Any) -> dict[str, Any]:
        return self.infer_prepared(self.prepare(obs))


def good_observation(camera_names: list[str], height: int, width: int, state_dim: int, value: float) -> dict:
    rng = np.random.default_rng(0)
    return {
        "images": {cam: rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for cam in camera_names},
        "state": np.full(state_dim, value, np.float32),
        "prompt": "fold the shirt",
    }


def bad_frames(limit: int, ceiling: int, camera_names: list[str], state_dim: int) -> list[tuple[str, bytes | str, str]]:
    """``(name, frame, expected)`` for a server with these frame limits: ``expected`` is a regular expression the
    error frame must match (the connection staying open), or ``"close"`` (the connection closed with 1009)."""
    obs = good_observation(camera_names, 48, 64, state_dim, 0.0)
    cam = camera_names[0]

    def with_image(image: np.ndarray) -> bytes:
        return msgpack_numpy.packb({**obs, "images": {**obs["images"], cam: image}})

    side = int(min(limit, 2**20) ** 0.5) - 8  # side x side empty arrays: a few bytes under the limit
    array32 = b"\xdd" + side.to_bytes(4, "big")
    container_bomb = array32 + (array32 + b"\x90" * side) * side
    frames: list[tuple[str, bytes | str, str]] = [
        ("over the limit", b"\x00" * (limit + 1), f"{limit + 1} bytes, over the server's limit"),
        ("at the hard ceiling", b"\x00" * ceiling, f"{ceiling} bytes, over the server's limit"),
        ("garbage", b"\xc1" + os.urandom(4095), "not a msgpack observation"),  # 0xc1: never valid msgpack
        ("text frame", "not msgpack", "got a text frame"),
        ("empty frame", b"", "not a msgpack observation"),
        ("container bomb", container_bomb, "more than \\d+ arrays and maps"),
        ("map bomb", msgpack.packb({i: None for i in range(min(100_000, limit // 4))}), "exceeds max_map_len"),
        ("deep nesting", b"\x91" * min(100_000, limit - 1) + b"\x90", "not a msgpack observation"),
        ("long prompt", msgpack_numpy.packb({**obs, "prompt": "x" * 20_000}), "field 'prompt': has 20000 characters"),
        ("zero-size image", with_image(np.zeros((0, 64, 3), np.uint8)), f"field 'images.{cam}': is empty"),
        ("over-wide image", with_image(np.zeros((1, 5000, 3), np.uint8)), f"field 'images.{cam}': is 1x5000"),
        ("lying array", msgpack_numpy.packb({**obs, "state": {"__ndarray__": True, "data": b"\0" * 8,
                                                              "dtype": "<f4", "shape": [10**9]}}), "cannot reshape"),
        ("over the hard ceiling", b"\x00" * (ceiling + 1), "close"),
    ]
    for name, frame, _ in frames:
        assert name == "over the hard ceiling" or len(frame) <= ceiling, name
    return frames


def open_client(port: int) -> ClientConnection:
    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, proxy=None, open_timeout=TIMEOUT_S,
                 legacy=True)
    ws.recv(timeout=TIMEOUT_S)  # the metadata frame
    return ws


@dataclass
class LoadReport:
    latencies_ms: list[float] = field(default_factory=list)
    good_failures: list[str] = field(default_factory=list)
    bad_sent: Counter = field(default_factory=Counter)
    error_frames: int = 0
    closes: int = 0
    surprises: list[str] = field(default_factory=list)  # a bad frame answered otherwise than expected
    rss_start_mib: float = 0.0
    rss_peak_growth_mib: float = 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def good_client(port: int, stop: threading.Event, report: LoadReport, obs_for: Callable[[float], dict],
                chunk: int) -> None:
    ws = open_client(port)
    k = 0
    try:
        while not stop.is_set():
            value = float(k % 100)
            frame = msgpack_numpy.packb(obs_for(value))
            start = time.perf_counter()
            try:
                ws.send(frame)
                reply = ws.recv(timeout=TIMEOUT_S)
            except (ConnectionClosed, TimeoutError, OSError) as err:
                report.good_failures.append(f"request {k}: {type(err).__name__}: {err}")
                ws = open_client(port)
                continue
            report.latencies_ms.append(1000.0 * (time.perf_counter() - start))
            if isinstance(reply, str):
                report.good_failures.append(f"request {k}: {reply}")
            else:
                actions = msgpack_numpy.unpackb(reply)["actions"]
                if actions.shape[0] != chunk or not np.all(actions == 2 * value):
                    report.good_failures.append(f"request {k}: wrong actions {actions[0]}")
            k += 1
    finally:
        ws.close()


def bad_client(port: int, stop: threading.Event, report: LoadReport, frames: list[tuple[str, bytes | str, str]]) -> None:
    ws = open_client(port)
    try:
        while not stop.is_set():
            for name, frame, expected in frames:
                if stop.is_set():
                    break
                report.bad_sent[name] += 1
                try:
                    ws.send(frame)
                    reply = ws.recv(timeout=TIMEOUT_S)
                except ConnectionClosed as closed:
                    code = closed.rcvd.code if closed.rcvd is not None else None
                    if expected != "close" or code not in (CloseCode.MESSAGE_TOO_BIG, None):
                        report.surprises.append(f"{name}: connection closed ({closed})")
                    report.closes += 1
                    ws = open_client(port)
                    continue
                except OSError as err:  # the server reset the socket while the client was still writing the frame
                    if expected != "close":
                        report.surprises.append(f"{name}: {type(err).__name__}: {err}")
                    report.closes += 1
                    ws = open_client(port)
                    continue
                if expected == "close" or not (isinstance(reply, str) and re.search(expected, reply)):
                    report.surprises.append(f"{name}: got {str(reply)[:160]!r}")
                else:
                    report.error_frames += 1
    finally:
        ws.close()


def run_load(port: int, seconds: float, obs_for: Callable[[float], dict], chunk: int,
             frames: list[tuple[str, bytes | str, str]] | None, rss_pid: int) -> LoadReport:
    """The good client for ``seconds`` (with the bad client sending ``frames`` unless ``None``); the RSS of
    ``rss_pid`` is sampled every 20 ms from the start and its peak growth over the start reported."""
    report = LoadReport(rss_start_mib=rss_mib(rss_pid))
    stop = threading.Event()
    errors: list[BaseException] = []

    def guarded(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as err:  # reported by the caller
                errors.append(err)
                stop.set()
        return run

    threads = [threading.Thread(target=guarded(good_client, port, stop, report, obs_for, chunk))]
    if frames is not None:
        threads.append(threading.Thread(target=guarded(bad_client, port, stop, report, frames)))
    for thread in threads:
        thread.start()
    peak = report.rss_start_mib
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        peak = max(peak, rss_mib(rss_pid))
        time.sleep(0.02)
    stop.set()
    for thread in threads:
        thread.join(timeout=2 * TIMEOUT_S)
    report.rss_peak_growth_mib = max(peak, rss_mib(rss_pid)) - report.rss_start_mib
    if errors:
        raise RuntimeError(f"a load client failed: {errors[0]!r}") from errors[0]
    return report


def row(scenario: str, report: LoadReport) -> dict[str, float | str | int]:
    return {
        "scenario": scenario,
        "good requests": len(report.latencies_ms),
        "good failed": len(report.good_failures),
        "p50 ms": report.percentile(50),
        "p95 ms": report.percentile(95),
        "max ms": max(report.latencies_ms, default=float("nan")),
        "bad frames sent": sum(report.bad_sent.values()),
        "error frames": report.error_frames,
        "closed (1009)": report.closes,
        "surprises": len(report.surprises),
        "server RSS MiB": report.rss_start_mib,
        "RSS growth MiB": report.rss_peak_growth_mib,
    }


def print_table(rows: list[dict[str, float | str | int]]) -> None:
    columns = list(rows[0])
    cells = [[f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row_cells in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row_cells, widths, strict=True)) + " |")


CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]


def serve(args: argparse.Namespace) -> None:
    """Subprocess mode: serve a SleepPolicy, print the port, run until killed."""
    from evaluate.serve_policy import PolicyServer

    logging.basicConfig(level=logging.ERROR)  # the bad client's requests are expected: keep the table readable
    policy = SleepPolicy(CAMERAS, args.state_dim, args.infer_ms / 1000.0)
    server = PolicyServer(policy, port=0, max_message_bytes=int(args.max_message_mb * 2**20))
    print(server.port, flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each row")
    parser.add_argument("--infer_ms", type=float, default=10.0, help="the stand-in model's inference time")
    parser.add_argument("--max_message_mb", type=float, default=8.0, help="the server's frame limit (its default)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--state_dim", type=int, default=14)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--infer_ms", str(args.infer_ms), "--max_message_mb",
         str(args.max_message_mb), "--state_dim", str(args.state_dim)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        port = int(server.stdout.readline())
        limit = int(args.max_message_mb * 2**20)
        frames = bad_frames(limit, 2 * limit, CAMERAS, args.state_dim)
        base = good_observation(CAMERAS, args.height, args.width, args.state_dim, 0.0)

        def obs_for(value: float) -> dict:
            return {**base, "state": np.full(args.state_dim, value, np.float32)}

        print(f"server pid {server.pid}: frame limit {limit} B, hard ceiling {2 * limit} B, "
              f"stand-in inference {args.infer_ms:g} ms, {len(CAMERAS)} cameras {args.height}x{args.width}; "
              f"{os.cpu_count()} CPUs", flush=True)
        rows = [row("good client alone", run_load(port, args.seconds, obs_for, 8, None, server.pid))]
        loaded = run_load(port, args.seconds, obs_for, 8, frames, server.pid)
        rows.append(row("with bad client", loaded))
        print_table(rows)
        print("bad frames sent: " + ", ".join(f"{name} {n}" for name, n in loaded.bad_sent.items()))
        for line in (loaded.good_failures + loaded.surprises)[:10]:
            print("  !", line)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
