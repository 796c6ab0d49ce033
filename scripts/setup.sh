#!/usr/bin/env bash
# Installs what building and running rtc-recorder needs on Debian 12. Idempotent and quiet when
# everything is already there.
set -euo pipefail

# Debian packages the build and the walkthrough use: the toolchain basics, FFmpeg's libraries and
# headers (the media path muxes through ffmpeg-next, whose bindings need clang/libclang), and the
# FFmpeg CLI (the walkthrough's publisher; ffprobe checks recordings).
APT_PACKAGES=(
  build-essential pkg-config curl ca-certificates
  clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libavfilter-dev libavdevice-dev libswscale-dev libswresample-dev
  ffmpeg
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup: cargo is in $HOME/.cargo/bin but not on PATH; add it: export PATH=\"\$HOME/.cargo/bin:\$PATH\"" >&2
  else
    echo "setup: no Rust toolchain found; install one with rustup (https://rustup.rs), Rust 1.85 or newer" >&2
  fi
  exit 1
fi
