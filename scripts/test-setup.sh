#!/usr/bin/env bash
# What the test suite needs beyond scripts/setup.sh: aiortc (PyPI), an independent WebRTC
# publisher for the WHIP tests, the aws CLI (PyPI) for the S3 recording tests, Janus for the SFU
# forwarder test, age, and Chromium for the browser tests. Idempotent and
# quiet when already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  echo "test-setup: installing python3"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null
fi
if ! "$PYTHON" -c "import aiortc" >/dev/null 2>&1; then
  echo "test-setup: installing aiortc (pip)"
  # Debian's system Python refuses user-level pip installs without this flag (PEP 668).
  "$PYTHON" -m pip install --quiet --disable-pip-version-check aiortc 2>/dev/null \
    || "$PYTHON" -m pip install --quiet --disable-pip-version-check --break-system-packages aiortc
fi
# The S3 recording tests (tests/media/s3_profile.rs) list and fetch what reached the bucket with the
# aws CLI, an independent client.
if ! command -v aws >/dev/null 2>&1; then
  echo "test-setup: installing awscli (pip)"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check awscli 2>/dev/null \
    || "$PYTHON" -m pip install --quiet --disable-pip-version-check --break-system-packages awscli
fi
# The encryption tests (tests/media/encryption.rs) decrypt what the recorder stored with the
# standard age CLI (Debian's `age`), as a customer holding the private key would.
if ! command -v age >/dev/null 2>&1 || ! command -v age-keygen >/dev/null 2>&1; then
  echo "test-setup: installing age (apt)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends age >/dev/null
fi
# The SFU-forwarder test (tests/media/janus.rs) runs a real Janus (Debian's 1.1.2) with a browser
# publisher that loads Janus' own JavaScript API (Debian's libjs-janus-gateway and the WebRTC
# adapter it needs).
JANUS_PKGS=()
for pkg in janus libjs-janus-gateway libjs-webrtc-adapter; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || JANUS_PKGS+=("$pkg")
done
if [ ${#JANUS_PKGS[@]} -gt 0 ]; then
  echo "test-setup: installing ${JANUS_PKGS[*]} (apt)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${JANUS_PKGS[@]}" >/dev/null
  # The package enables a system service; the test starts its own server.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now janus >/dev/null 2>&1 || true; fi
fi
# The review page's browser test (tests/media/review.rs) drives Debian's chromium headless with
# playwright-core (npm, pinned in tests/browser/package-lock.json; no browser download).
BROWSER_PKGS=()
command -v chromium >/dev/null 2>&1 || BROWSER_PKGS+=(chromium fonts-dejavu-core)
# Only when missing: a machine whose node comes from elsewhere (NodeSource) has npm inside it,
# and Debian's npm package would conflict with it.
command -v node >/dev/null 2>&1 || BROWSER_PKGS+=(nodejs)
command -v npm >/dev/null 2>&1 || BROWSER_PKGS+=(npm)
if [ ${#BROWSER_PKGS[@]} -gt 0 ]; then
  echo "test-setup: installing ${BROWSER_PKGS[*]} (apt)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${BROWSER_PKGS[@]}" >/dev/null
fi
if [ ! -f tests/browser/node_modules/playwright-core/package.json ] \
  || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  echo "test-setup: installing playwright-core (npm)"
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
