"""Reading ACT-layout HDF5 episodes.

Layout (one file per episode)::

    /action                        (T, action_dim)  float
    /observations/qpos             (T, state_dim)   float
    /observations/qvel             (T, state_dim)   float
    /observations/images/<camera>  (T, H, W, 3)     uint8    (or (T, L) JPEG/PNG bytes when compressed)
    /compress_len                  (num_cams, T)            (compressed episodes only)
    /language_raw                  (1,)             bytes
    /substep_reasonings            (T,)             bytes    (optional: one sub-step reasoning per step)
    /reasoning                     (1,)             bytes    (optional, the reference's fallback: one per episode)
    attrs: sim (bool), compress (bool)

An episode with neither reasoning key has no reasoning annotation (:func:`read_reasoning` gives ``None``).
"""

from __future__ import annotations

import fnmatch
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

ACTION_KEY = "/action"
QPOS_KEY = "/observations/qpos"
QVEL_KEY = "/observations/qvel"
IMAGES_GROUP = "/observations/images"
LANGUAGE_KEY = "/language_raw"
REASONING_KEY = "/substep_reasonings"
# The reference falls back to this episode-level key (read at index 0) when there are no sub-steps.
EPISODE_REASONING_KEY = "/reasoning"
COMPRESS_LEN_KEY = "/compress_len"
# The only formats a compressed frame may be, by their magic numbers.
FRAME_MAGIC: dict[str, bytes] = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n"}


def find_all_hdf5(
    dataset_dir: str | os.PathLike,
    skip_mirrored_data: bool = False,
    name_filter: Callable[[str], bool] | None = None,
) -> list[str]:
    """All ``*.hdf5`` files below ``dataset_dir``, sorted, with ``name_filter`` already applied.

    Filtering here (not after counting, as the reference did) keeps episode ids aligned with files.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset_dir {dataset_dir} does not exist or is not a directory")
    files: list[str] = []
    for root, _dirs, names in os.walk(dataset_dir):
        for name in fnmatch.filter(names, "*.hdf5"):
            if "features" in name:
                continue
            if skip_mirrored_data and "mirror" in name:
                continue
            path = os.path.join(root, name)
            if name_filter is not None and not name_filter(path):
                continue
            files.append(path)
    files.sort()
    if not files:
        raise FileNotFoundError(f"no .hdf5 episodes found under {dataset_dir} (after name_filter)")
    return files


def decode_text(value: bytes | str | np.ndarray) -> str:
    if isinstance(value, np.ndarray):
        value = value.item() if value.shape == () else value.reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def is_compressed(root: h5py.File) -> bool:
    return bool(root.attrs.get("compress", False))


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG-encode an ``(H, W, 3)`` uint8 frame the way ACT's recorder does (cv2 convention).

    ACT calls ``cv2.imencode`` on RGB arrays, so the JPEG holds the channels reversed; writing
    the same here means ACT's files and ours decode alike.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[..., ::-1])).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class FrameDecodeError(ValueError):
    """A compressed frame that is not a decodable JPEG or PNG image; the message names where it came from."""


def frame_format(data: bytes) -> str | None:
    """``"JPEG"`` or ``"PNG"`` by the buffer's first bytes (its magic number), else ``None``."""
    for name, magic in FRAME_MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def decode_jpeg(data: np.ndarray | bytes, source: str = "compressed frame") -> np.ndarray:
    """Inverse of :func:`encode_jpeg`: ``(H, W, 3)`` uint8 in the channel order that was recorded.

    ``data`` is a JPEG or PNG buffer (ACT's recorders write either with ``cv2.imencode``), possibly
    zero-padded. Episodes are downloaded files: only those two formats, told by their magic number,
    ever reach a decoder (Pillow would otherwise try every format it has a plugin for), and a frame
    over Pillow's pixel limit is refused before it is decoded. Anything else raises
    :class:`FrameDecodeError` naming ``source``.
    """
    buffer = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    fmt = frame_format(buffer)
    if fmt is None:
        raise FrameDecodeError(
            f"{source}: not a JPEG (FF D8 FF) or PNG (89 50 4E 47) image; its first bytes are "
            f"{buffer[:8].hex(' ').upper() or 'none (empty buffer)'}"
        )
    try:
        with Image.open(io.BytesIO(buffer), formats=(fmt,)) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and img.width * img.height > limit:
                raise FrameDecodeError(
                    f"{source}: {fmt} frame of {img.width}x{img.height} pixels is over the limit of {limit} "
                    "(PIL.Image.MAX_IMAGE_PIXELS)"
                )
            return np.asarray(img.convert("RGB"))[..., ::-1].copy()
    except FrameDecodeError:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on bad data; all mean "does not decode"
        raise FrameDecodeError(f"{source}: {fmt} frame does not decode ({type(err).__name__}: {err})") from err


def read_frame(root: h5py.File, camera: str, t: int) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 image of ``camera`` at step ``t`` (decoding compressed episodes).

    Compressed frames are zero-padded JPEG (or PNG) buffers; like ACT's loader we decode the padded
    buffer (the decoder stops at the end-of-image marker), so ``compress_len`` is not needed. A bad
    compressed frame raises :class:`FrameDecodeError` naming the file, camera and frame index.
    """
    key = f"{IMAGES_GROUP}/{camera}"
    raw = root[key][t]
    if not is_compressed(root):
        return raw
    return decode_jpeg(raw, source=f"{root.filename}: key '{key}' (camera '{camera}'), frame {t}")


def read_language(root: h5py.File) -> str:
    return decode_text(root[LANGUAGE_KEY][0]) if LANGUAGE_KEY in root else ""


def has_reasoning(root: h5py.File) -> bool:
    """Whether the episode carries a reasoning annotation (either key)."""
    return REASONING_KEY in root or EPISODE_REASONING_KEY in root


def read_reasoning(root: h5py.File, t: int) -> str | None:
    """The reasoning of step ``t``: ``/substep_reasonings[t]``, else the episode's ``/reasoning[0]``
    (as the reference), else ``None``: the episode has no reasoning annotation."""
    if REASONING_KEY in root:
        return decode_text(root[REASONING_KEY][t])
    if EPISODE_REASONING_KEY in root:
        return decode_text(root[EPISODE_REASONING_KEY][()])  # decode_text takes entry 0 of a (1,) array
    return None


def episode_length(path: str | os.PathLike) -> int:
    with h5py.File(path, "r") as root:
        return int(root[ACTION_KEY].shape[0])


def write_episode(
    path: str | Path,
    actions: np.ndarray,
    qpos: np.ndarray,
    qvel: np.ndarray,
    images: dict[str, np.ndarray],
    instruction: str,
    reasoning: Sequence[str] | str | None,
    compress: bool = False,
    sim: bool = True,
) -> Path:
    """Write one ACT-layout episode atomically (temp file + rename).

    ``actions, qpos, qvel (T, D)``, ``images {camera: (T, H, W, 3) uint8}`` (stored raw, or as
    zero-padded JPEG buffers with ``compress``), one ``instruction``, and ``reasoning``: one string
    per step (``/substep_reasonings``), one string for the episode (``/reasoning``, the reference's
    fallback) or ``None`` (no annotation). ``sim=False`` marks a real-robot recording.
    """
    path = Path(path)
    length = len(actions)
    num_reasoning = length if reasoning is None or isinstance(reasoning, str) else len(reasoning)
    if not (len(qpos) == len(qvel) == num_reasoning == length):
        raise ValueError(f"episode parts differ in length: {length}, {len(qpos)}, {len(qvel)}, {num_reasoning}")
    for camera, frames in images.items():
        if frames.shape[0] != length or frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError(f"camera {camera}: frames must be ({length}, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as root:
        root.attrs["sim"] = sim
        root.attrs["compress"] = compress
        root.create_dataset("action", data=np.asarray(actions, dtype=np.float32))
        obs = root.create_group("observations")
        obs.create_dataset("qpos", data=np.asarray(qpos, dtype=np.float32))
        obs.create_dataset("qvel", data=np.asarray(qvel, dtype=np.float32))
        group = obs.create_group("images")
        if compress:
            encoded = {cam: [encode_jpeg(frame) for frame in frames] for cam, frames in images.items()}
            width = max((len(b) for bufs in encoded.values() for b in bufs), default=0)
            compress_len = np.zeros((len(images), length), dtype=np.int64)
            for c, (cam, bufs) in enumerate(encoded.items()):
                padded = np.zeros((length, width), dtype=np.uint8)
                for t, buf in enumerate(bufs):
                    padded[t, : len(buf)] = np.frombuffer(buf, dtype=np.uint8)
                    compress_len[c, t] = len(buf)
                group.create_dataset(cam, data=padded)
            root.create_dataset("compress_len", data=compress_len)
        else:
            for cam, frames in images.items():
                group.create_dataset(cam, data=frames, chunks=(1, *frames.shape[1:]))
        root.create_dataset("language_raw", data=np.array([instruction.encode()]))
        if isinstance(reasoning, str):
            root.create_dataset("reasoning", data=np.array([reasoning.encode()]))
        elif reasoning is not None:
            root.create_dataset("substep_reasonings", data=np.array([r.encode() for r in reasoning]))
    tmp.replace(path)
    return path
