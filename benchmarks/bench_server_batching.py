"""Policy server with several robots: requests/s and latency of N clients, serialised server against batching server.

Each of N clients (one websocket connection each, as one robot) sends ``--requests`` observations one after another,
each waiting for its reply. The policy is :class:`BatchSleepPolicy`: the real observation checks, then a sleep of a
fixed cost per model call plus a small cost per observation in it (a GPU's batch cost: the weights are read once per
call). Rows: ``max_batch 1`` (the serialised server) and ``max_batch --max_batch`` for 1, 4 and 8 clients. ``--real``
adds rows with the tiny random DexVLAPolicy checkpoint the tests use (built in a temporary directory; CPU).

    .venv/bin/python benchmarks/bench_server_batching.py [--requests 20] [--fixed_ms 20] [--per_item_ms 1] [--real]

``tests/test_server_batching.py`` runs the 8-client case, smaller.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_server_load import SleepPolicy, good_observation, open_client, print_table  # noqa: E402
from evaluate import msgpack_numpy  # noqa: E402
from evaluate.serve_policy import PolicyServer  # noqa: E402

TIMEOUT_S = 60.0


class BatchSleepPolicy(SleepPolicy):
    """:class:`SleepPolicy` with ``infer_prepared_batch``: one call sleeps ``fixed_s + per_item_s * len(batch)``.

    Each row's ``actions`` are ``2 * state`` repeated (a reply can be checked against its request); the batch sizes
    it was called with are recorded in :attr:`batch_sizes`.
    """

    def __init__(self, camera_names: list[str], state_dim: int = 14, fixed_s: float = 0.02, per_item_s: float = 0.001,
                 chunk: int = 8) -> None:
        super().__init__(camera_names, state_dim, fixed_s, chunk)
        self.fixed_s, self.per_item_s = fixed_s, per_item_s
        self.batch_sizes: list[int] = []

    def infer_prepared_batch(self, states: list[np.ndarray]) -> list[dict[str, Any]]:
        self.batch_sizes.append(len(states))
        time.sleep(self.fixed_s + self.per_item_s * len(states))
        return [{"actions": np.tile(2 * s, (self.chunk, 1)), "reasoning": f"{s[0]:g}"} for s in states]

    def infer_prepared(self, state: np.ndarray) -> dict[str, Any]:
        return self.infer_prepared_batch([state])[0]


@contextmanager
def serving(policy: Any, **kwargs: Any) -> Iterator[PolicyServer]:
    """A :class:`PolicyServer` on a free loopback port, serving from a thread."""
    server = PolicyServer(policy, host="127.0.0.1", port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=TIMEOUT_S)


@dataclass
class LoadResult:
    clients: int
    requests: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)  # server_timing's, one per reply
    failures: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def request_value(client: int, k: int) -> float:
    """The state value of request ``k`` of ``client``: unique per request, so a reply names its request."""
    return 1000.0 * client + k


def run_clients(port: int, clients: int, requests: int, obs_for: Callable[[float], dict],
                check: Callable[[float, dict], str | None]) -> LoadResult:
    """``clients`` connections, started together, each sending ``requests`` requests (``obs_for(value)``) one after
    another; ``check(value, reply)`` returns what is wrong with a reply (or ``None``)."""
    result = LoadResult(clients)
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1, timeout=TIMEOUT_S)
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            ws = open_client(port)
            frames = [(v, msgpack_numpy.packb(obs_for(v))) for v in (request_value(index, k) for k in range(requests))]
            barrier.wait()
            for value, frame in frames:
                start = time.perf_counter()
                ws.send(frame)
                raw = ws.recv(timeout=TIMEOUT_S)
                latency = 1000.0 * (time.perf_counter() - start)
                reply = raw if isinstance(raw, str) else msgpack_numpy.unpackb(raw)
                problem = reply if isinstance(reply, str) else check(value, reply)
                with lock:
                    result.latencies_ms.append(latency)
                    if problem is not None:
                        result.failures.append(f"client {index}, request {value:g}: {problem}")
                    else:
                        result.batch_sizes.append(int(reply["server_timing"]["batch_size"]))
            ws.close()
        except BaseException as err:  # reported by the caller
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()  # every client has connected and packed its frames
    start = time.perf_counter()
    for thread in threads:
        thread.join(timeout=clients * requests * TIMEOUT_S)
    result.seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    result.requests = len(result.latencies_ms)
    return result


def doubled_state(chunk: int) -> Callable[[float, dict], str | None]:
    """The check of :class:`BatchSleepPolicy`'s replies: ``actions == 2 * state`` of the request, ``chunk`` rows."""

    def check(value: float, reply: dict) -> str | None:
        actions = reply["actions"]
        if actions.shape[0] != chunk or not np.all(actions == 2 * value):
            return f"actions {actions[0]} are not for this request"
        return None

    return check


def row(server: str, result: LoadResult) -> dict[str, Any]:
    return {
        "server": server, "clients": result.clients, "requests": result.requests, "failed": len(result.failures),
        "req/s": result.rps, "p50 ms": result.percentile(50), "p99 ms": result.percentile(99),
        "mean batch": float(np.mean(result.batch_sizes)) if result.batch_sizes else float("nan"),
        "max batch": max(result.batch_sizes, default=0),
    }


def compare(policy_for: Callable[[], Any], client_counts: list[int], requests: int, max_batch: int,
            batch_timeout_ms: float, obs_for: Callable[[float], dict], check: Callable[[float, dict], str | None],
            label: str) -> list[dict[str, Any]]:
    rows = []
    for clients in client_counts:
        for batch in (1, max_batch):
            with serving(policy_for(), max_batch=batch, batch_timeout_ms=batch_timeout_ms) as server:
                result = run_clients(server.port, clients, requests, obs_for, check)
            name = f"{label}, serialised" if batch == 1 else f"{label}, max_batch {batch}"
            rows.append(row(name, result))
            for line in result.failures[:3]:
                print("  !", line)
    return rows


CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]


def real_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The tiny random DexVLAPolicy of the tests (CPU), 4 clients: replies checked against lone inferences."""
    from evaluate.policy import DexVLAPolicy
    from evaluate.testing import build_tiny_checkpoint
    from scripts.make_example_episodes import make_example_episodes
    from scripts.make_tiny_qwen2_vl import build_tiny_qwen2_vl

    with tempfile.TemporaryDirectory() as tmp:
        episodes = Path(tmp, "episodes")
        make_example_episodes(episodes, num_episodes=2, episode_len=30, height=56, width=56, seed=0)
        ckpt = build_tiny_checkpoint(Path(tmp, "ckpt"), build_tiny_qwen2_vl(Path(tmp, "qwen")), episodes, CAMERAS)
        policy = DexVLAPolicy(ckpt, device="cpu", max_new_tokens=args.max_new_tokens, seed=0)
        base = good_observation(CAMERAS, 56, 56, policy.state_dim, 0.0)

        def obs_for(value: float) -> dict:  # a state in the data's range, distinct per request
            return {**base, "state": np.full(policy.state_dim, (value % 997) / 997.0, np.float32)}

        expected: dict[float, np.ndarray] = {}
        for client in range(args.real_clients):
            for k in range(args.real_requests):
                value = request_value(client, k)
                expected[value] = policy.infer(obs_for(value))["actions"]

        def check(value: float, reply: dict) -> str | None:
            diff = float(np.abs(reply["actions"] - expected[value]).max())
            return None if diff < 1e-4 else f"actions differ from a lone inference's by {diff:g}"

        policy.warmup(obs_for(0.0), 1)
        return compare(lambda: policy, [args.real_clients], args.real_requests, args.max_batch,
                       args.batch_timeout_ms, obs_for, check, "tiny DexVLA")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--fixed_ms", type=float, default=20.0, help="the stand-in model's cost per call")
    parser.add_argument("--per_item_ms", type=float, default=1.0, help="... and per observation in the call")
    parser.add_argument("--max_batch", type=int, default=8)
    parser.add_argument("--batch_timeout_ms", type=float, default=5.0)
    parser.add_argument("--real", action="store_true", help="add rows with the tiny DexVLAPolicy checkpoint (CPU)")
    parser.add_argument("--real_clients", type=int, default=4)
    parser.add_argument("--real_requests", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=4, help="reasoning tokens of the tiny policy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    state_dim = 14
    base = good_observation(CAMERAS, 48, 64, state_dim, 0.0)

    def obs_for(value: float) -> dict:
        return {**base, "state": np.full(state_dim, value, np.float32)}

    print(f"stand-in model: {args.fixed_ms:g} ms a call + {args.per_item_ms:g} ms an observation; "
          f"{args.requests} requests a client; batch timeout {args.batch_timeout_ms:g} ms", flush=True)
    rows = compare(
        lambda: BatchSleepPolicy(CAMERAS, state_dim, args.fixed_ms / 1000.0, args.per_item_ms / 1000.0),
        args.clients, args.requests, args.max_batch, args.batch_timeout_ms, obs_for, doubled_state(8), "stand-in",
    )
    if args.real:
        rows += real_rows(args)
    print_table(rows)


if __name__ == "__main__":
    main()
