#!/usr/bin/env bash
# Install tandem on a fresh machine: system packages (apt, when root), .venv, pinned Python packages.
# Idempotent; `make install` runs it once and leaves a stamp in .venv/.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES="libosmesa6 ffmpeg"   # OSMesa: MuJoCo rendering on CPU; ffmpeg: video decoding (torchcodec)

missing=""
for pkg in $SYSTEM_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing system packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "tandem needs these system packages:$missing" >&2
    echo "run:  sudo apt-get install -y$missing   then run make again" >&2
    exit 1
  fi
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "tandem needs Python 3.11 (lerobot 0.4 series); found $("$PYTHON" --version). Set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip==26.3" "setuptools==80.10.2" wheel
# All versions are pinned by constraints.txt (torch's CUDA wheels included; they run on CPU too).
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
# gym-pusht declares opencv-python, which would collide with lerobot's opencv-python-headless
# (both own cv2): install it without dependencies; its real ones are in pyproject.toml.
.venv/bin/python -m pip install -q --no-deps -c constraints.txt "gym-pusht==0.1.8"
.venv/bin/python - <<'PY'
import importlib.metadata as md
def has(d):
    try:
        md.version(d); return True
    except md.PackageNotFoundError:
        return False
assert not has("opencv-python"), "opencv-python is installed beside opencv-python-headless; pip uninstall opencv-python"
import cv2, torch, lerobot, zmq, hydra, mujoco, metaworld  # noqa: F401
print(f"tandem installed: torch {torch.__version__}, lerobot {md.version('lerobot')}, mujoco {mujoco.__version__}")
PY
