#!/usr/bin/env bash
# Upload throughput: the S3 backend (`actors/examples/upload_bench.rs`) against `aws s3 cp`
# (awscli, PyPI) on the same files and the same s3s-fs server, in one run. The files stand for
# the tracks of a 10-minute call with 6 tracks: 3 video tracks at ~1 Mbit/s (75 MiB each) and
# 3 audio tracks at ~32 kbit/s (2.4 MiB each). Prints one line per client and the ratio.
#
# usage: scripts/bench-upload.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE_FLAG=""
[ "${1:-}" = "--release" ] && PROFILE_FLAG="--release"

scripts/test-services.sh start
TOOLS="${RTC_TOOLS_DIR:-$HOME/.cache/rtc-recorder/tools}"
if [ ! -x "$TOOLS/awscli-venv/bin/aws" ]; then
  echo "bench: installing awscli (PyPI, in a venv)" >&2
  python3 -m venv "$TOOLS/awscli-venv"
  "$TOOLS/awscli-venv/bin/pip" install --quiet --disable-pip-version-check awscli
fi
# shellcheck disable=SC1090
set -a; . "${RTC_SERVICES_DIR:-$HOME/.cache/rtc-recorder/services}/env"; set +a

WORK="$(mktemp -d)"
RUN_ID="bench-$(date +%s)"
# s3s-fs keeps objects as files under its data directory: remove this run's copies afterwards.
S3_DATA="${RTC_SERVICES_DIR:-$HOME/.cache/rtc-recorder/services}/s3-data/$RTC_S3_BUCKET/$RUN_ID"
trap 'rm -rf "$WORK" "$S3_DATA"' EXIT
mkdir -p "$WORK/files"
for i in 1 2 3; do
  head -c $((75 << 20)) /dev/urandom >"$WORK/files/video-$i.webm"
  head -c $((2400 << 10)) /dev/urandom >"$WORK/files/audio-$i.webm"
done
TOTAL=$(du -cb "$WORK"/files/* | tail -1 | cut -f1)

cargo build -q -p recorder-actors --example upload_bench $PROFILE_FLAG
BIN="${CARGO_TARGET_DIR:-target}/$([ -n "$PROFILE_FLAG" ] && echo release || echo debug)/examples/upload_bench"

ours=$("$BIN" "$WORK/files" "$RUN_ID/ours" 4)
echo "$ours"
ours_secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$ours")

start=$(date +%s.%N)
AWS_ACCESS_KEY_ID="$RTC_S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$RTC_S3_SECRET_KEY" AWS_DEFAULT_REGION="$RTC_S3_REGION" \
  "$TOOLS/awscli-venv/bin/aws" s3 cp --quiet --recursive --endpoint-url "$RTC_S3_ENDPOINT" \
  "$WORK/files" "s3://$RTC_S3_BUCKET/$RUN_ID/awscli/"
end=$(date +%s.%N)
aws_secs=$(python3 -c "print(f'{$end - $start:.3f}')")
python3 - "$TOTAL" "$ours_secs" "$aws_secs" <<'PY'
import sys
total, ours, aws = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
mib = total / (1 << 20)
print(f"aws-s3-cp files=6 bytes={total} seconds={aws:.3f} mib_per_sec={mib / aws:.1f}")
print(f"ratio rtc-recorder/aws-s3-cp throughput = {aws / ours:.2f}")
PY
