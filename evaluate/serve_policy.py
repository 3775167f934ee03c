#!/usr/bin/env python
"""Serve a DexVLA checkpoint over websocket with openpi's policy-server protocol.

    python -m evaluate.serve_policy --ckpt DIR [--host 127.0.0.1] [--port 8000] [--device cuda]

Protocol (what the stock ``openpi-client`` speaks): on connect the server sends one binary msgpack
frame with the policy's metadata (cameras, state/action sizes, chunk size, ...); then for every binary
msgpack request (an observation ``{"images": {camera: (H, W, 3) uint8}, "state": (S,), "prompt": str}``)
it replies with one binary msgpack frame ``{"actions": (chunk, action_dim) float32, "reasoning": str,
"policy_timing": {...}, "server_timing": {"infer_ms": ..., "wait_ms": ..., "batch_size": ..., "prev_total_ms": ...}}``.
Arrays travel as ``{__ndarray__, data, dtype, shape}`` maps (:mod:`evaluate.msgpack_numpy`).

Several robots: with ``--max_batch N`` (default 8) the requests of different connections that wait for the model
together run as one batch (``policy.infer_prepared_batch``; the seeded DDIM noise is per row, so a batched row is
the one-by-one chunk up to float reordering). A batch waits at most ``--batch_timeout_ms`` (default 5) after its
first request for more, and only while some connected client has no request queued: a lone client never waits
(:class:`RequestBatcher`). ``--max_batch 1``, or a policy without ``infer_prepared_batch``, serves one request at a
time. ``server_timing`` reports the ``batch_size`` a request ran in and its ``wait_ms`` for the model.

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
  handed out in arrival order (:class:`FifoLock`), so no client can starve another. Batches are formed in
  arrival order too, and a malformed observation never reaches one (it fails in ``prepare``).
- A websocket handshake with an ``Origin`` header (every browser sends one) is refused (403) unless the origin
  is in ``--allowed_origins``: a web page open in the operator's browser cannot drive the robot's policy.
  Non-browser clients (openpi-client) send no ``Origin``.
- The metadata carries no absolute paths; an error frame for a server-side failure names the error's type only
  (the details go to the server's log).
- ``GET /healthz`` answers 200 ``OK``, or 503 when the policy reports itself unhealthy (``policy.healthy`` is
  false) or the last inference failed with anything but a malformed observation (a CUDA error, say); a failed
  batch fails each of its requests (error frames) and makes /healthz unhealthy the same way.
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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
DEFAULT_MAX_BATCH = 8  # the command line's; PolicyServer's own default (1) serves one request at a time
DEFAULT_BATCH_TIMEOUT_MS = 5.0


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


@dataclass
class BatchInfo:
    """How a request went through the batcher: ``batch_size`` of the model call it was part of, ``wait_ms`` from
    being queued to that call's start (waiting for the model and for the batch to fill)."""

    batch_size: int
    wait_ms: float


@dataclass
class _Pending:
    item: Any
    queued_at: float
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    info: BatchInfo | None = None


class RequestBatcher:
    """Runs ``run_batch`` on one thread of its own over requests that many threads :meth:`submit`.

    ``run_batch(items) -> results`` gets up to ``max_batch`` items in the order they were submitted and returns one
    result per item; a result that is an exception is raised in that item's submitter only, an exception raised by
    ``run_batch`` itself in every submitter of the batch.

    A batch starts with the oldest queued request and takes what is queued behind it; while it has room it waits for
    more, until ``batch_timeout_s`` after that request was queued, but only while some client has no request queued:
    :meth:`add_client`/:meth:`remove_client` keep count of the clients, each of which has at most one request in
    flight (a connection is served one request at a time). So a lone client never waits for a batch, and clients
    whose replies just went out are waited for (briefly) instead of splitting into batches of one and of the rest.
    Without a client count (``None`` clients: nothing registered) a batch waits the full timeout when not full.
    """

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], max_batch: int, batch_timeout_s: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if batch_timeout_s < 0:
            raise ValueError(f"batch_timeout must not be negative, got {batch_timeout_s} s")
        self.max_batch = int(max_batch)
        self.batch_timeout_s = float(batch_timeout_s)
        self._run_batch = run_batch
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        self._clients: int | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="policy-batcher", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        with self._cond:
            return len(self._queue)

    def add_client(self) -> None:
        with self._cond:
            self._clients = (self._clients or 0) + 1
            self._cond.notify_all()

    def remove_client(self) -> None:
        with self._cond:
            self._clients = max(0, (self._clients or 0) - 1)
            self._cond.notify_all()  # a batch that waited for this client may be complete now

    def submit(self, item: Any) -> tuple[Any, BatchInfo]:
        """Queue ``item``, wait for its batch to run; its result and how it was batched (or raise its error)."""
        pending = _Pending(item, time.monotonic())
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._queue.append(pending)
            self._cond.notify_all()
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.info is not None
        return pending.result, pending.info

    def close(self, timeout_s: float | None = None) -> None:
        """Serve what is queued, then stop the thread (requests submitted afterwards are refused)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _full(self) -> bool:
        expected = self.max_batch if self._clients is None else min(self.max_batch, max(1, self._clients))
        return len(self._queue) >= expected

    def _next_batch(self) -> list[_Pending] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed)
            if not self._queue:
                return None  # closed and drained
            deadline = self._queue[0].queued_at + self.batch_timeout_s
            while not self._full() and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            start = time.monotonic()
            try:
                results = list(self._run_batch([p.item for p in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"the policy returned {len(results)} results for a batch of {len(batch)}")
            except BaseException as err:  # every request of the batch gets the error; the thread goes on
                results = [err] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                pending.info = BatchInfo(len(batch), 1000.0 * (start - pending.queued_at))
                if isinstance(result, BaseException):
                    pending.error = result
                else:
                    pending.result = result
                pending.done.set()


class ModelFailure(RuntimeError):
    """The model failed on a batch this request was part of (logged once on the server); ``type_name``: the error's
    type, all a client is told."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


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
    """Websocket server around a policy; each connection gets its own thread, the model one request (or one batch of
    requests of different connections, ``max_batch > 1``) at a time.

    The policy has a ``metadata`` dict and either ``prepare(obs) -> prepared`` (validation and pre-processing,
    thread-safe, run outside the inference lock) and ``infer_prepared(prepared) -> dict``, as
    :class:`evaluate.policy.DexVLAPolicy` has, or just ``infer(obs) -> dict`` (then all of it runs under the lock).
    Batching needs ``prepare`` and ``infer_prepared_batch(list of prepared) -> list of dict`` (one per item, in order).

    Args:
        policy: e.g. a :class:`evaluate.policy.DexVLAPolicy`.
        host, port: where to listen (``port=0``: any free port, see :attr:`port`).
        max_message_bytes: largest request frame answered; a larger one gets an error frame (see the module
            docstring for the hard ceiling above which the connection is closed).
        allowed_origins: ``Origin`` header values (e.g. ``"http://localhost:8080"``) accepted besides none.
        decode_limits: msgpack caps (default: :class:`~evaluate.msgpack_numpy.DecodeLimits` with
            ``max_bin_len=max_message_bytes``).
        max_batch: most requests run as one batch; 1 (default here, 8 on the command line): one at a time, each
            reply bit-identical to a lone inference.
        batch_timeout_ms: longest a batch waits for more requests after its first was queued (see
            :class:`RequestBatcher` for when it does not wait at all).
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
        max_batch: int = 1,
        batch_timeout_ms: float = DEFAULT_BATCH_TIMEOUT_MS,
    ) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must not be negative, got {batch_timeout_ms}")
        self.policy = policy
        self.metadata = public_metadata(dict(getattr(policy, "metadata", {})))
        self.max_message_bytes = int(max_message_bytes)
        self.hard_max_message_bytes = HARD_CEILING_FACTOR * self.max_message_bytes
        self.decode_limits = decode_limits or msgpack_numpy.DecodeLimits(max_bin_len=self.max_message_bytes)
        self._prepare = getattr(policy, "prepare", None)
        self._run = policy.infer_prepared if self._prepare is not None else policy.infer
        self._lock = FifoLock()
        self._failure: str | None = None  # why the last inference failed; None once one succeeds
        self._batcher: RequestBatcher | None = None
        if max_batch > 1:
            if self._prepare is not None and callable(getattr(policy, "infer_prepared_batch", None)):
                self._batcher = RequestBatcher(self._infer_batch, max_batch, batch_timeout_ms / 1000.0)
            else:
                logger.warning("the policy has no prepare/infer_prepared_batch: serving one request at a time")
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
    def max_batch(self) -> int:
        """The largest batch the model is given (1: requests are served one at a time)."""
        return 1 if self._batcher is None else self._batcher.max_batch

    @property
    def waiting(self) -> int:
        """Requests prepared and waiting for the model (queued for a batch, or for the inference lock)."""
        return self._lock.waiting if self._batcher is None else self._batcher.queued

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
            self._server.shutdown()  # waits for the connections' handlers, whose requests the batcher still serves
        else:
            self._server.socket.close()
        if self._batcher is not None:
            self._batcher.close(timeout_s=60.0)

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
        if self._batcher is not None:
            self._batcher.add_client()
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
        finally:
            if self._batcher is not None:
                self._batcher.remove_client()
        logger.info("client disconnected: %s", peer)

    def _serve_connection(self, connection: ServerConnection, peer: Any) -> None:
        connection.send(msgpack_numpy.packb(self.metadata))
        prev_total_ms: float | None = None
        for message in connection:
            start = time.monotonic()
            try:
                reply, info = self._answer(message)
                reply["server_timing"] = {
                    "infer_ms": 1000.0 * (time.monotonic() - start), "wait_ms": info.wait_ms,
                    "batch_size": info.batch_size,
                }
                if prev_total_ms is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total_ms
                packed = msgpack_numpy.packb(reply)  # inside the try: an unpackable reply is an error frame too
            except ObservationError as err:
                self._log_bad_request(peer, err)
                connection.send(f"ObservationError: {err}")
                continue
            except ModelFailure as err:  # its batch failed; logged once, with the traceback, by _infer_batch
                connection.send(f"{err.type_name}: the request failed on the server (details in its log)")
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

    def _answer(self, message: bytes | str) -> tuple[dict[str, Any], BatchInfo]:
        """The reply to one request and how it reached the model (batch size, ms waited for it)."""
        obs = self._decode(message)
        prepared = self._prepare(obs) if self._prepare is not None else obs  # outside the lock
        if self._batcher is not None:
            result, info = self._batcher.submit(prepared)
        else:
            asked = time.monotonic()
            with self._lock:
                info = BatchInfo(1, 1000.0 * (time.monotonic() - asked))
                try:
                    result = self._run(prepared)
                except ObservationError:
                    raise
                except Exception as err:  # the model failed: /healthz says so until an inference succeeds
                    self._failure = type(err).__name__  # the type only: /healthz answers anyone (details: the log)
                    raise
                self._failure = None
        reply = {k: (np.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in result.items()}
        return reply, info

    def _infer_batch(self, prepared: list[Any]) -> list[Any]:
        """The batcher's model call: one result per request, or the exception that request's client gets."""
        try:
            results = list(self.policy.infer_prepared_batch(prepared))
            if len(results) != len(prepared):
                raise RuntimeError(f"infer_prepared_batch gave {len(results)} results for {len(prepared)} observations")
        except ObservationError as err:
            if len(prepared) == 1:
                return [err]
            # Validation belongs in prepare(); should the policy still find a bad observation, find it alone.
            return [self._infer_batch([p])[0] for p in prepared]
        except Exception as err:  # the model failed: every request of the batch fails, /healthz says so
            logger.error("the model failed on a batch of %d requests:\n%s", len(prepared), traceback.format_exc())
            self._failure = type(err).__name__
            return [ModelFailure(type(err).__name__) for _ in prepared]
        self._failure = None
        return results


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
    parser.add_argument(
        "--embodiment", default=None,
        help="which embodiment of a checkpoint trained over several to serve (optional with one)",
    )
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
    parser.add_argument(
        "--reasoning_every", type=int, default=1,
        help="generate the reasoning on one query in K per prompt, reuse the last one otherwise (1: every query)",
    )
    parser.add_argument(
        "--compile_head", nargs="?", const=True, default=False,
        help="torch.compile the head's denoiser (GPU serving); optionally a mode, e.g. reduce-overhead",
    )
    parser.add_argument("--default_prompt", default=None, help="used when a request has no prompt")
    parser.add_argument("--warmup", type=int, default=2, help="inferences on a dummy observation before serving")
    parser.add_argument("--max_message_mb", type=float, default=DEFAULT_MAX_MESSAGE_MB,
                        help=f"largest request answered (MiB); frames over {HARD_CEILING_FACTOR}x this close the connection")
    parser.add_argument("--max_prompt_chars", type=int, default=ObservationLimits.max_prompt_chars)
    parser.add_argument("--max_image_side", type=int, default=ObservationLimits.max_image_side,
                        help="largest image height and width accepted (pixels)")
    parser.add_argument("--allowed_origins", nargs="*", default=[], metavar="ORIGIN",
                        help="browser origins allowed to connect, e.g. http://localhost:8080 (default: none)")
    parser.add_argument("--max_batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="most concurrent requests run as one batch (1: one at a time, bit-reproducible replies)")
    parser.add_argument("--batch_timeout_ms", type=float, default=DEFAULT_BATCH_TIMEOUT_MS,
                        help="longest a batch waits for more requests; never while every client has one queued")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from evaluate.policy import DexVLAPolicy

    policy = DexVLAPolicy(
        args.ckpt, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
        seed=None if args.seed < 0 else args.seed, num_inference_timesteps=args.num_inference_timesteps,
        image_size_stable=args.image_size_stable, image_size_wrist=args.image_size_wrist,
        image_crop_ratio=args.image_crop_ratio,
        default_prompt=args.default_prompt, reasoning_every=args.reasoning_every, compile_head=args.compile_head,
        limits=ObservationLimits(max_prompt_chars=args.max_prompt_chars, max_image_side=args.max_image_side),
        embodiment=args.embodiment,
    )
    if args.warmup:
        times = policy.warmup(dummy_observation(policy.metadata), args.warmup)
        logger.info("warm-up: %s ms", ", ".join(f"{t:.0f}" for t in times))
    server = PolicyServer(
        policy, args.host, args.port,
        max_message_bytes=int(args.max_message_mb * 2**20), allowed_origins=args.allowed_origins,
        max_batch=args.max_batch, batch_timeout_ms=args.batch_timeout_ms,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
