#!/usr/bin/env bash
# System packages the toolkit needs, installed only when missing:
#   - Chromium (driven by Playwright through executable_path=/usr/bin/chromium; no browser download)
#   - EGL/GL libraries, so MuJoCo renders headless with MUJOCO_GL=egl
#   - chromedriver (Debian's chromium-driver): the MiniWoB++ package's own Selenium env, which the tests
#     compare ours against
#   - adb (Debian's package), the optional adb-binary client of envs/android (adbutils needs no binary)
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v adb >/dev/null 2>&1 || missing+=(adb)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || missing+=(libegl1 libgl1 libgles2)
ldconfig -p 2>/dev/null | grep -q 'libEGL_mesa.so.0' || missing+=(libegl-mesa0 libgl1-mesa-dri)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_system_deps: need root (or sudo) to apt-get install: ${missing[*]}" >&2
        exit 1
    fi
fi
echo "install_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
