"""What the committed LeRobotDataset v3.0 fixture (``tests/data/lerobot_fixture``) holds, by formula.

``scripts/make_lerobot_fixture.py`` writes the fixture from these functions (with the ``lerobot``
library's own writer) and the tests recompute them to check what a reader gives back, so the data
exists once, as code. Pure numpy: importable from both the project venv and the lerobot venv.

For episode ``e`` (0-based) and frame ``t`` (0-based), joint ``j`` in ``[0, 14)``::

    state[e, t, j]  = (1000 e + 10 t + j) / 64          (float32, exact: integer / power of two)
    action[e, t, j] = (1000 e + 10 (t + 1) + j) / 64    (the next frame's state)
    task(e)         = TASKS[e % len(TASKS)]              (so two episodes share a task)
    reasoning(e, t) = f"episode {e} step {t}: {PHASES[3 t // length(e)]}"

Camera ``c`` (index in ``CAMERAS``) shows, at every pixel ``(y, x)`` of an ``(H, W, 3)`` frame::

    R = 48 + round(128 x / (W - 1))       a fixed left-to-right ramp (orientation check; mean 112)
    G = 24 + 7 t                          the frame (neighbours differ by 7 levels)
    B = 40 + 60 e + 10 c                  the episode and the camera

Smooth and flat, so lossy video coding keeps each channel's mean within a few levels.
"""

from __future__ import annotations

import numpy as np

FPS = 50
DIM = 14
EPISODE_LENGTHS = (20, 25, 30)
TASKS = ("pick up the red cube", "fold the towel")
PHASES = ("reach", "grasp", "lift")
REASONING_KEY = "observation.reasoning"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
# (feature key, (height, width), stored as "video" or "image")
CAMERAS: tuple[tuple[str, tuple[int, int], str], ...] = (
    ("observation.images.cam_high", (48, 64), "video"),
    ("observation.images.cam_left_wrist", (24, 32), "video"),
    ("observation.images.cam_right_wrist", (24, 32), "image"),
)
# Mean colour a decoded frame may differ by, per channel (levels of 255), and still be "that frame";
# half the 7-level step between neighbouring frames.
COLOUR_TOLERANCE = 3.5


def state(e: int, length: int | None = None) -> np.ndarray:
    """``(T, DIM)`` float32 state of episode ``e``."""
    t = np.arange(EPISODE_LENGTHS[e] if length is None else length)[:, None]
    j = np.arange(DIM)[None, :]
    return ((1000 * e + 10 * t + j) / 64).astype(np.float32)


def action(e: int) -> np.ndarray:
    """``(T, DIM)`` float32 action of episode ``e``: the state one frame later."""
    return state(e, EPISODE_LENGTHS[e] + 1)[1:]


def task(e: int) -> str:
    return TASKS[e % len(TASKS)]


def reasoning(e: int, t: int) -> str:
    return f"episode {e} step {t}: {PHASES[3 * t // EPISODE_LENGTHS[e]]}"


def frame_colour(camera_index: int, e: int, t: int) -> tuple[float, float, float]:
    """Mean (R, G, B) of the frame of camera ``camera_index`` at ``(e, t)`` (R is the ramp's mean)."""
    return 112.0, float(24 + 7 * t), float(40 + 60 * e + 10 * camera_index)


def frame(camera_index: int, e: int, t: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 frame of camera ``camera_index`` at ``(e, t)``."""
    height, width = CAMERAS[camera_index][1]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = np.round(48 + 128 * np.arange(width) / (width - 1)).astype(np.uint8)[None, :]
    _, green, blue = frame_colour(camera_index, e, t)
    image[..., 1] = int(green)
    image[..., 2] = int(blue)
    return image
