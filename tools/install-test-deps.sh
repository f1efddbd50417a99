#!/usr/bin/env bash
# Install everything the test suite needs on a bare Debian machine (used by .ci/run and the README).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Headless napari needs a virtual X server and Mesa's OpenGL (QT_QPA_PLATFORM=offscreen is not
# enough: napari's vispy canvas needs OpenGL). The tests then run under xvfb-run (README).
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1-mesa-dri libegl1 libgl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
    libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 >/dev/null

# The reference implementations used by the parity tests import torchvision: install a matching
# torch/torchvision pair first, so that the package's plain torch>=2.1 is already satisfied.
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
python -m pip install --quiet -e ".[testing]"

# micro-sam 1.8.14, the reference of the instance decoder and of AIS (code only, tests only). Its
# full dependency list (trackastra, bioimageio.core, ...) goes far beyond what the code under
# test imports, so the packages are installed without their dependencies, plus the few modules
# imported on the way (matplotlib by torch_em.util, scikit-learn by elf.segmentation).
python -m pip install --quiet --no-deps micro-sam==1.8.14 torch-em==0.10.9 python-elf==0.9.2 \
    bioimage-cpp==0.10.0 xxhash==4.1.0 kornia==0.9.0 kornia-rs==0.2.0
python -m pip install --quiet matplotlib scikit-learn

# Meta's sam2 1.1.0, the reference of the SAM 2.1 engine (code only, tests only). Its sdist builds
# a CUDA extension unless told not to, and its build imports torch: build it against the torch
# installed above (no isolated build environment, which would download another torch).
SAM2_BUILD_CUDA=0 python -m pip install --quiet --no-build-isolation sam2==1.1.0
