#!/usr/bin/env bash
# A throwaway venv holding Hugging Face's `lerobot` library, for writing and reading LeRobotDataset
# v3.0 roots with the library's own code (the committed test fixture, round-trip checks).
#
# Why a separate venv: lerobot pins huggingface-hub<0.36, torch<2.11, torchvision<0.26 and
# diffusers<0.36, which conflict with .venv (transformers 5, torch 2.14). Why `lerobot` and not the
# `lerobot-dataset` package: the latter is a third-party repackaging whose newer releases need
# Python >= 3.12; `lerobot` is the library itself and its 0.4.x line supports Python 3.11.
#
# Torch is NOT downloaded: lerobot is installed with --no-deps and its torch-free dependencies are
# installed by name; a .pth file then appends .venv's site-packages to sys.path, AFTER this venv's
# own site-packages, so torch/torchvision/accelerate come from .venv while this venv's own
# huggingface-hub, datasets, numpy and av win where both exist. The .pth is written only after
# every pip call, so pip never sees (or tries to replace) .venv's packages.
#
# Usage: scripts/setup_lerobot_venv.sh [VENV_DIR]   (default: .lerobot-venv in the repository root)
#   WITH_TORCHCODEC=1 also installs torchcodec (lerobot's default video decoder) wired to PyAV's
#   bundled FFmpeg; source VENV_DIR/bin/ffmpeg-env.sh before using it. The writer needs only PyAV;
#   the library's reader (LeRobotDataset(repo_id, root=...)[i]) needs torchcodec: its "pyav" backend
#   goes through torchvision's video reader, which torchvision 0.29 no longer has. Checked: torchcodec
#   0.17.0 + torch 2.14.1 + PyAV 15.1.0's FFmpeg 7 read the committed fixture.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAIN_VENV="${MAIN_VENV:-$REPO_ROOT/.venv}"
VENV_DIR="${1:-$REPO_ROOT/.lerobot-venv}"

# Exact pins, found to import and write together on Python 3.11 (lerobot 0.4.4's own ranges).
LEROBOT_PIN="lerobot==0.4.4"
DEPS=(
  "datasets==4.1.1"
  "huggingface-hub==0.35.3"
  "av==15.1.0"
  "pandas==2.3.3"
  "pyarrow==21.0.0"
  "numpy==2.3.4"
  "deepdiff==8.6.1"
  "jsonlines==4.0.0"
  "termcolor==3.2.0"
  "packaging==25.0"
  "draccus==0.10.0"
  "pillow==12.1.0"
  "fsspec==2025.9.0"
)
TORCHCODEC_PIN="torchcodec==0.17.0"

if [[ ! -x "$MAIN_VENV/bin/python" ]]; then
  echo "error: $MAIN_VENV/bin/python not found; create the project venv first (make venv)" >&2
  exit 1
fi
MAIN_SITE="$("$MAIN_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BASE_PYTHON="$("$MAIN_VENV/bin/python" -c 'import sys; print(sys._base_executable)')"

"$BASE_PYTHON" -m venv "$VENV_DIR"
PY="$VENV_DIR/bin/python"
PIP=("$PY" -m pip install --no-cache-dir --disable-pip-version-check)
# Drop a .pth left by an earlier run so that pip below sees only this venv.
VENV_SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$VENV_SITE/zz_dexvla_main_venv.pth"

"${PIP[@]}" "${DEPS[@]}"
"${PIP[@]}" --no-deps "$LEROBOT_PIN"
if [[ "${WITH_TORCHCODEC:-0}" == "1" ]]; then
  "${PIP[@]}" --no-deps "$TORCHCODEC_PIN"
fi

if [[ -d "$VENV_SITE/torch" ]]; then
  echo "error: torch was installed into $VENV_SITE; it must come from $MAIN_VENV" >&2
  exit 1
fi

# Named "zz_" so that it is processed last: site appends .pth entries in file-name order, all after
# the venv's own site-packages.
echo "$MAIN_SITE" > "$VENV_SITE/zz_dexvla_main_venv.pth"

if [[ "${WITH_TORCHCODEC:-0}" == "1" ]]; then
  # torchcodec dlopens libavutil.so.N etc.; PyAV's wheel ships those libraries under hashed names
  # (libavutil-1a2b3c.so.59...). Link them under their plain sonames in one folder.
  FFMPEG_DIR="$VENV_DIR/ffmpeg-libs"
  mkdir -p "$FFMPEG_DIR"
  for lib in "$VENV_SITE"/av.libs/*.so*; do
    name="$(basename "$lib")"
    plain="$(echo "$name" | sed -E 's/^(lib[A-Za-z0-9_]+)-[0-9a-f]{8}(\.so\.[0-9]+).*/\1\2/')"
    ln -sf "$lib" "$FFMPEG_DIR/$plain"
  done
  echo "export LD_LIBRARY_PATH=\"$FFMPEG_DIR\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\"" > "$VENV_DIR/bin/ffmpeg-env.sh"
fi

"$PY" - <<'EOF'
import sys, torch, av, lerobot
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: F401
print(f"lerobot {lerobot.__version__}, torch {torch.__version__} from {torch.__file__}, av {av.__version__}")
EOF
echo "ready: $VENV_DIR (python: $PY)"
