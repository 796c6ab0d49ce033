#!/usr/bin/env bash
# Time from stop to every artefact uploaded, for a recording with 6 tracks of 10 minutes, against
# `aws s3 cp` (awscli, PyPI) of the same files to the same s3s-fs server, in one run.
#
# The track files are real WebM made with the FFmpeg CLI: 10 s encoded once (VP8 640x360 at
# ~1 Mbit/s, Opus at 32 kbit/s) and repeated to 10 minutes with `-stream_loop -c copy`, so sizes
# match a real call without 10 minutes of encoding. They are cached under
# ~/.cache/rtc-recorder/bench-tracks.
#
# usage: scripts/bench-stop-to-uploaded.sh [--release]
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

TRACKS="$HOME/.cache/rtc-recorder/bench-tracks"
if [ ! -f "$TRACKS/done" ]; then
  echo "bench: making 6 ten-minute tracks with ffmpeg (once)" >&2
  mkdir -p "$TRACKS"
  ff() { ffmpeg -hide_banner -loglevel error -nostdin -y "$@"; }
  ff -f lavfi -i "testsrc2=size=640x360:rate=30:duration=10" -c:v libvpx -deadline realtime -cpu-used 8 \
    -b:v 1M -minrate 1M -maxrate 1M -g 60 "$TRACKS/video-10s.webm"
  ff -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=10" -c:a libopus -b:a 32k "$TRACKS/audio-10s.webm"
  for i in 1 2 3; do
    ff -stream_loop 59 -i "$TRACKS/video-10s.webm" -c copy "$TRACKS/video-$i.webm"
    ff -stream_loop 59 -i "$TRACKS/audio-10s.webm" -c copy "$TRACKS/audio-$i.webm"
  done
  touch "$TRACKS/done"
fi
WORK="$(mktemp -d)"
RUN_ID="stopbench-$(date +%s)"
S3_DATA="${RTC_SERVICES_DIR:-$HOME/.cache/rtc-recorder/services}/s3-data/$RTC_S3_BUCKET/$RUN_ID"
trap 'rm -rf "$WORK" "$S3_DATA"' EXIT
mkdir -p "$WORK/files"
cp "$TRACKS"/video-[123].webm "$TRACKS"/audio-[123].webm "$WORK/files/"
TOTAL=$(du -cb "$WORK"/files/* | tail -1 | cut -f1)
ffprobe -v error -show_entries format=duration -of csv=p=0 "$WORK/files/video-1.webm" | sed 's/^/bench: track duration (s) /' >&2

cargo build -q -p recorder-actors --example stop_to_uploaded_bench $PROFILE_FLAG
BIN="${CARGO_TARGET_DIR:-target}/$([ -n "$PROFILE_FLAG" ] && echo release || echo debug)/examples/stop_to_uploaded_bench"

ours=$("$BIN" "$WORK/files" "$RUN_ID/ours")
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
print(f"ratio stop-to-uploaded / aws-s3-cp time = {ours / aws:.2f}")
PY
