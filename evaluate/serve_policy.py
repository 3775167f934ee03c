#!/usr/bin/env python
"""Serve a DexVLA checkpoint over websocket with openpi's policy-server protocol.

    python -m evaluate.serve_policy --ckpt DIR [--host 127.0.0.1] [--port 8000] [--device cuda]

Protocol (what the stock ``openpi-client`` speaks): on connect the server sends one binary msgpack
frame with the policy's metadata (cameras, state/action sizes, chunk size, ...); then for every binary
msgpack request (an observation ``{"images": {camera: (H, W, 3) uint8}, "state": (S,), "prompt": str}``)
it replies with one binary msgpack frame ``{"actions": (chunk, action_dim) float32, "reasoning": str,
"policy_timing": {...}, "server_timing": {"infer_ms": ..., "prev_total_ms": ...}}``. Arrays travel as
``{__ndarray__, data, dtype, shape}`` maps (:mod:`evaluate.msgpack_numpy`).

A request that fails gets a *text* frame with the error instead (a malformed observation names the
offending field); the connection stays open and the server keeps serving. ``GET /healthz`` answers 200.
The server binds 127.0.0.1 unless ``--host`` says otherwise: it runs whatever it is sent through a model,
so expose it only on a network you trust.
"""

from __future__ import annotations

import argparse
import http
import logging
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.server import Server, ServerConnection, serve  # noqa: E402

from evaluate import msgpack_numpy  # noqa: E402
from evaluate.policy import ObservationError  # noqa: E402

logger = logging.getLogger("evaluate.serve_policy")


class PolicyServer:
    """Websocket server around anything with ``infer(obs) -> dict`` and a ``metadata`` dict.

    Inference is serialised (one request at a time across connections); each connection gets its own thread.

    Args:
        policy: e.g. a :class:`evaluate.policy.DexVLAPolicy`.
        host, port: where to listen (``port=0``: any free port, see :attr:`port`).
    """

    def __init__(self, policy: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.policy = policy
        self.metadata = dict(getattr(policy, "metadata", {}))
        self._lock = threading.Lock()
        self._serving = threading.Event()
        self._server: Server = serve(
            self._handle, host, port, compression=None, max_size=None, process_request=self._health_check
        )

    @property
    def port(self) -> int:
        return int(self._server.socket.getsockname()[1])

    @property
    def host(self) -> str:
        return str(self._server.socket.getsockname()[0])

    def serve_forever(self) -> None:
        logger.info("serving %s on ws://%s:%d", self.metadata.get("checkpoint", "policy"), self.host, self.port)
        self._serving.set()
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Stop serving and close all connections (a server that never served just closes its socket)."""
        if self._serving.is_set():
            self._server.shutdown()
        else:
            self._server.socket.close()

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @staticmethod
    def _health_check(connection: ServerConnection, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    def _handle(self, connection: ServerConnection) -> None:
        peer = connection.remote_address
        logger.info("client connected: %s", peer)
        try:
            self._serve_connection(connection, peer)
        except ConnectionClosed:  # the client left while a reply was on its way: its business, not an error
            logger.info("client disconnected before its reply: %s", peer)
            return
        logger.info("client disconnected: %s", peer)

    def _serve_connection(self, connection: ServerConnection, peer: Any) -> None:
        connection.send(msgpack_numpy.packb(self.metadata))
        prev_total_ms: float | None = None
        for message in connection:
            start = time.monotonic()
            try:
                reply = self._infer(message)
                reply["server_timing"] = {"infer_ms": 1000.0 * (time.monotonic() - start)}
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                packed = msgpack_numpy.packb(reply)  # inside the try: an unpackable reply is an error frame too
            except ObservationError as err:
                logger.warning("bad observation from %s: %s", peer, err)
                connection.send(f"ObservationError: {err}")
                continue
            except Exception as err:  # keep serving: a client's mistake must not take the server down
                logger.error("request from %s failed:\n%s", peer, traceback.format_exc())
                connection.send(f"{type(err).__name__}: {err}")
                continue
            connection.send(packed)
            prev_total_ms = 1000.0 * (time.monotonic() - start)

    def _infer(self, message: bytes | str) -> dict[str, Any]:
        if isinstance(message, str):
            raise ObservationError("<frame>", "requests must be binary msgpack frames, got a text frame")
        try:
            obs = msgpack_numpy.unpackb(message)
        except Exception as err:
            raise ObservationError("<frame>", f"not a msgpack observation ({type(err).__name__}: {err})") from None
        with self._lock:
            result = self.policy.infer(obs)
        return {k: (np.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in result.items()}


def dummy_observation(metadata: dict[str, Any]) -> dict[str, Any]:
    """A black-image, zero-state observation shaped as ``metadata`` describes (for warm-up)."""
    width, height = metadata["image_size_stable"]
    return {
        "images": {cam: np.zeros((height, width, 3), np.uint8) for cam in metadata["camera_names"]},
        "state": np.zeros(metadata["state_dim"], np.float32),
        "prompt": "warm up",
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="fixed DDIM noise per request; -1: fresh noise each time")
    parser.add_argument("--num_inference_timesteps", type=int, default=None, help="DDIM steps (default: checkpoint's)")
    parser.add_argument("--image_size_stable", default=None)
    parser.add_argument("--image_size_wrist", default=None)
    parser.add_argument("--image_crop_ratio", type=float, default=None, help="for checkpoints that do not record it")
    parser.add_argument("--default_prompt", default=None, help="used when a request has no prompt")
    parser.add_argument("--warmup", type=int, default=2, help="inferences on a dummy observation before serving")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from evaluate.policy import DexVLAPolicy

    policy = DexVLAPolicy(
        args.ckpt, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
        seed=None if args.seed < 0 else args.seed, num_inference_timesteps=args.num_inference_timesteps,
        image_size_stable=args.image_size_stable, image_size_wrist=args.image_size_wrist,
        image_crop_ratio=args.image_crop_ratio,
        default_prompt=args.default_prompt,
    )
    if args.warmup:
        times = policy.warmup(dummy_observation(policy.metadata), args.warmup)
        logger.info("warm-up: %s ms", ", ".join(f"{t:.0f}" for t in times))
    server = PolicyServer(policy, args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
