#!/usr/bin/env python
"""Serve a DexVLA checkpoint over websocket with openpi's policy-server protocol.

    python -m evaluate.serve_policy --ckpt DIR [--host 127.0.0.1] [--port 8000] [--device cuda]

Protocol (what the stock ``openpi-client`` speaks): on connect the server sends one binary msgpack
frame with the policy's metadata (cameras, state/action sizes, chunk size, ...); then for every binary
msgpack request (an observation ``{"images": {camera: (H, W, 3) uint8}, "state": (S,), "prompt": str}``)
it replies with one binary msgpack frame ``{"actions": (chunk, action_dim) float32, "reasoning": str,
"policy_timing": {...}, "server_timing": {"infer_ms": ..., "wait_ms": ..., "prev_total_ms": ...}}``. Arrays
travel as ``{__ndarray__, data, dtype, shape}`` maps (:mod:`evaluate.msgpack_numpy`).

A request that fails gets a *text* frame with the error instead (a malformed observation names the
offending field); the connection stays open and the server keeps serving. The server binds 127.0.0.1
unless ``--host`` says otherwise: it runs whatever it is sent through a model, so expose it only on a
network you trust. Within that, it defends itself:

- A frame over ``--max_message_mb`` (default 8 MiB: three 480x640 RGB cameras are 2.6 MiB) gets an error
  frame and the connection stays usable, up to a hard ceiling of twice that; websockets buffers a whole frame
  before anyone can look at it, so a frame over the ceiling closes the connection (code 1009, message too big)
  instead. Each connection queues at most two frames behind the one being served.
- msgpack containers, strings and blobs are capped, as is their number (:class:`~evaluate.msgpack_numpy.DecodeLimits`);
  the policy caps the prompt length and the image height and width (:class:`~evaluate.policy.ObservationLimits`).
- Validation and pre-processing run outside the inference lock, in parallel with the model; the lock is
  handed out in arrival order (:class:`FifoLock`), so no client can starve another.
- A websocket handshake with an ``Origin`` header (every browser sends one) is refused (403) unless the origin
  is in ``--allowed_origins``: a web page open in the operator's browser cannot drive the robot's policy.
  Non-browser clients (openpi-client) send no ``Origin``.
- The metadata carries no absolute paths; an error frame for a server-side failure names the error's type only
  (the details go to the server's log).
- ``GET /healthz`` answers 200 ``OK``, or 503 when the policy reports itself unhealthy (``policy.healthy`` is
  false) or the last inference failed with anything but a malformed observation (a CUDA error, say).
"""

from __future__ import annotations

import argparse
import http
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.frames import CloseCode  # noqa: E402
from websockets.sync.server import Server, ServerConnection, serve  # noqa: E402

from evaluate import msgpack_numpy  # noqa: E402
from evaluate.policy import ObservationError, ObservationLimits  # noqa: E402

logger = logging.getLogger("evaluate.serve_policy")

DEFAULT_MAX_MESSAGE_MB = 8.0
# Frames up to this many times the limit are read (and answered with an error frame); larger ones close the
# connection before their payload is buffered. The factor bounds what one connection can make the server hold.
HARD_CEILING_FACTOR = 2
# Bad requests logged at WARNING per minute, server-wide; the rest at DEBUG (a client looping on bad frames, even
# reconnecting each time, must not flood the log).
BAD_REQUEST_WARNINGS_PER_MINUTE = 20


class _WarningBudget:
    """Counts events in one-minute windows: :meth:`spend` returns the event's number within its window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._count = 0

    def spend(self) -> int:
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= 60.0:
                self._window_start, self._count = now, 0
            self._count += 1
            return self._count


class FifoLock:
    """A lock handed out in the order it was asked for.

    ``threading.Lock`` makes no such promise: a thread that releases it and asks again at once usually gets
    it back ahead of threads already waiting, so one busy client could starve the others.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._now_serving = 0

    @property
    def waiting(self) -> int:
        """Threads that asked for the lock and do not hold it yet."""
        with self._cond:
            return max(0, self._next_ticket - self._now_serving - 1)

    def acquire(self) -> None:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: self._now_serving == ticket)

    def release(self) -> None:
        with self._cond:
            self._now_serving += 1
            self._cond.notify_all()

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _looks_like_path(value: str) -> bool:
    return os.path.isabs(value) or PureWindowsPath(value).is_absolute() or value.startswith("~")


def public_metadata(metadata: Any) -> Any:
    """``metadata`` with every string that is an absolute path replaced by its last component (recursively)."""
    if isinstance(metadata, dict):
        return {key: public_metadata(value) for key, value in metadata.items()}
    if isinstance(metadata, list | tuple):
        return [public_metadata(value) for value in metadata]
    if isinstance(metadata, str) and _looks_like_path(metadata):
        return PureWindowsPath(metadata).name or Path(metadata).name
    return metadata


class PolicyServer:
    """Websocket server around a policy; each connection gets its own thread, the model one request at a time.

    The policy has a ``metadata`` dict and either ``prepare(obs) -> prepared`` (validation and pre-processing,
    thread-safe, run outside the inference lock) and ``infer_prepared(prepared) -> dict``, as
    :class:`evaluate.policy.DexVLAPolicy` has, or just ``infer(obs) -> dict`` (then all of it runs under the lock).

    Args:
        policy: e.g. a :class:`evaluate.policy.DexVLAPolicy`.
        host, port: where to listen (``port=0``: any free port, see :attr:`port`).
        max_message_bytes: largest request frame answered; a larger one gets an error frame (see the module
            docstring for the hard ceiling above which the connection is closed).
        allowed_origins: ``Origin`` header values (e.g. ``"http://localhost:8080"``) accepted besides none.
        decode_limits: msgpack caps (default: :class:`~evaluate.msgpack_numpy.DecodeLimits` with
            ``max_bin_len=max_message_bytes``).
    """

    def __init__(
        self,
        policy: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        max_message_bytes: int = int(DEFAULT_MAX_MESSAGE_MB * 2**20),
        allowed_origins: Sequence[str] = (),
        decode_limits: msgpack_numpy.DecodeLimits | None = None,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.policy = policy
        self.metadata = public_metadata(dict(getattr(policy, "metadata", {})))
        self.max_message_bytes = int(max_message_bytes)
        self.hard_max_message_bytes = HARD_CEILING_FACTOR * self.max_message_bytes
        self.decode_limits = decode_limits or msgpack_numpy.DecodeLimits(max_bin_len=self.max_message_bytes)
        self._prepare = getattr(policy, "prepare", None)
        self._run = policy.infer_prepared if self._prepare is not None else policy.infer
        self._lock = FifoLock()
        self._failure: str | None = None  # why the last inference failed; None once one succeeds
        self._bad_request_log = _WarningBudget()
        self._serving = threading.Event()
        self._server: Server = serve(
            self._handle,
            host,
            port,
            compression=None,
            max_size=self.hard_max_message_bytes,
            max_queue=1,  # reading pauses once two frames wait behind the one being served (memory per connection)
            origins=[None, *allowed_origins],
            process_request=self._health_check,
        )

    @property
    def port(self) -> int:
        return int(self._server.socket.getsockname()[1])

    @property
    def host(self) -> str:
        return str(self._server.socket.getsockname()[0])

    @property
    def healthy(self) -> bool:
        """False when the policy says so (``policy.healthy``) or the last inference failed (see :attr:`failure`)."""
        return self._failure is None and bool(getattr(self.policy, "healthy", True))

    @property
    def failure(self) -> str | None:
        """The type of the error of the last inference, when it failed (e.g. ``"RuntimeError"``)."""
        return self._failure

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

    def _health_check(self, connection: ServerConnection, request: Any) -> Any:
        if request.path != "/healthz":
            return None
        if self.healthy:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        reason = f"the last inference failed ({self._failure})" if self._failure else "the policy reports a failure"
        return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"unhealthy: {reason}\n")

    def _handle(self, connection: ServerConnection) -> None:
        peer = connection.remote_address
        logger.info("client connected: %s", peer)
        try:
            self._serve_connection(connection, peer)
        except ConnectionClosed as closed:
            if closed.sent is not None and closed.sent.code == CloseCode.MESSAGE_TOO_BIG:
                logger.warning(
                    "closed the connection of %s: a frame over the hard limit of %d bytes",
                    peer, self.hard_max_message_bytes,
                )
            else:  # the client left while a reply was on its way: its business, not an error
                logger.info("client disconnected before its reply: %s", peer)
            return
        logger.info("client disconnected: %s", peer)

    def _serve_connection(self, connection: ServerConnection, peer: Any) -> None:
        connection.send(msgpack_numpy.packb(self.metadata))
        prev_total_ms: float | None = None
        for message in connection:
            start = time.monotonic()
            try:
                reply, wait_ms = self._answer(message)
                reply["server_timing"] = {"infer_ms": 1000.0 * (time.monotonic() - start), "wait_ms": wait_ms}
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                packed = msgpack_numpy.packb(reply)  # inside the try: an unpackable reply is an error frame too
            except ObservationError as err:
                self._log_bad_request(peer, err)
                connection.send(f"ObservationError: {err}")
                continue
            except Exception as err:  # keep serving: a client's mistake must not take the server down
                logger.error("request from %s failed:\n%s", peer, traceback.format_exc())
                connection.send(f"{type(err).__name__}: the request failed on the server (details in its log)")
                continue
            connection.send(packed)
            prev_total_ms = 1000.0 * (time.monotonic() - start)

    def _log_bad_request(self, peer: Any, err: ObservationError) -> None:
        number = self._bad_request_log.spend()
        if number <= BAD_REQUEST_WARNINGS_PER_MINUTE:
            logger.warning("bad request from %s: %s", peer, err)
            if number == BAD_REQUEST_WARNINGS_PER_MINUTE:
                logger.warning("%d bad requests this minute: more are logged at DEBUG until it ends", number)
        else:
            logger.debug("bad request from %s: %s", peer, err)

    def _decode(self, message: bytes | str) -> Any:
        if len(message) > self.max_message_bytes:
            raise ObservationError(
                "<frame>",
                f"{len(message)} bytes, over the server's limit of {self.max_message_bytes} bytes "
                f"(--max_message_mb {self.max_message_bytes / 2**20:g})",
            )
        if isinstance(message, str):
            raise ObservationError("<frame>", "requests must be binary msgpack frames, got a text frame")
        try:
            return msgpack_numpy.unpackb(message, self.decode_limits)
        except Exception as err:
            raise ObservationError("<frame>", f"not a msgpack observation ({type(err).__name__}: {err})") from None

    def _answer(self, message: bytes | str) -> tuple[dict[str, Any], float]:
        """The reply to one request and the ms it waited for the inference lock."""
        obs = self._decode(message)
        prepared = self._prepare(obs) if self._prepare is not None else obs  # outside the lock
        asked = time.monotonic()
        with self._lock:
            wait_ms = 1000.0 * (time.monotonic() - asked)
            try:
                result = self._run(prepared)
            except ObservationError:
                raise
            except Exception as err:  # the model failed: /healthz says so until an inference succeeds
                self._failure = type(err).__name__  # the type only: /healthz answers anyone (details: the log)
                raise
            self._failure = None
        reply = {k: (np.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in result.items()}
        return reply, wait_ms


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
    parser.add_argument("--max_message_mb", type=float, default=DEFAULT_MAX_MESSAGE_MB,
                        help=f"largest request answered (MiB); frames over {HARD_CEILING_FACTOR}x this close the connection")
    parser.add_argument("--max_prompt_chars", type=int, default=ObservationLimits.max_prompt_chars)
    parser.add_argument("--max_image_side", type=int, default=ObservationLimits.max_image_side,
                        help="largest image height and width accepted (pixels)")
    parser.add_argument("--allowed_origins", nargs="*", default=[], metavar="ORIGIN",
                        help="browser origins allowed to connect, e.g. http://localhost:8080 (default: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from evaluate.policy import DexVLAPolicy

    policy = DexVLAPolicy(
        args.ckpt, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
        seed=None if args.seed < 0 else args.seed, num_inference_timesteps=args.num_inference_timesteps,
        image_size_stable=args.image_size_stable, image_size_wrist=args.image_size_wrist,
        image_crop_ratio=args.image_crop_ratio,
        default_prompt=args.default_prompt,
        limits=ObservationLimits(max_prompt_chars=args.max_prompt_chars, max_image_side=args.max_image_side),
    )
    if args.warmup:
        times = policy.warmup(dummy_observation(policy.metadata), args.warmup)
        logger.info("warm-up: %s ms", ", ".join(f"{t:.0f}" for t in times))
    server = PolicyServer(
        policy, args.host, args.port,
        max_message_bytes=int(args.max_message_mb * 2**20), allowed_origins=args.allowed_origins,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
