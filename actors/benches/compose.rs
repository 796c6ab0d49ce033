//! Composition speed: the recorder's `media::compose` against the FFmpeg CLI running the same
//! filter graph on the same inputs, in one run. Prints wall time, x realtime and CPU seconds
//! of each. Usage: `cargo bench -p recorder-actors --bench compose --profile dev -- [seconds]`.
//!
//! Inputs (made with the FFmpeg CLI, VP8/Opus WebM like the recorder's tracks): participant A
//! (red camera, 440 Hz) for the whole call, participant B (blue, 880 Hz) from 20% of it, and A's
//! screen (green, 640x360) from the middle.
//!
//! Each composition is also made of the issue's simplest case first: one participant, a 640x360
//! camera at 30 fps and ~1 Mbit/s with a microphone. The speed column is the CLI's wall time
//! over ours (above 1: faster than the CLI).
//!
//! Then the stereo agent/customer file of the same call (A left, B right, Opus 64 kb/s in Ogg):
//! `media::stereo::compose_stereo` against the CLI running `stereo_description` on the same
//! microphone files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use recorder_actors::media::compose::{self, ComposeConfig, ComposeInput, ComposeMedia, ComposeRole};
use recorder_actors::media::stereo::{self, Side, StereoFormat};

/// A VP8 (at `video_rate`, e.g. "300k") or Opus WebM of `source`; `None` makes audio.
fn make(dir: &Path, name: &str, source: &str, secs: f64, video_rate: Option<&str>) -> PathBuf {
    let path = dir.join(name);
    let codec: &[&str] = if let Some(rate) = video_rate {
        &[
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            rate,
        ]
    } else {
        &["-c:a", "libopus", "-b:a", "32k"]
    };
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            source,
            "-t",
            &format!("{secs}"),
        ])
        .args(codec)
        .arg(&path)
        .status()
        .expect("ffmpeg CLI");
    assert!(status.success(), "cannot make {name}");
    path
}

/// CPU seconds (user + system) of this process and of its waited-for children.
fn cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("linux /proc");
    // Fields after the command name (which may hold spaces, inside parentheses).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<f64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    // utime, stime, cutime, cstime are fields 14..=17, i.e. 11..=14 after the name.
    let tick = 100.0;
    ((f[11] + f[12]) / tick, (f[13] + f[14]) / tick)
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(60.0);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let late = secs * 0.2;
    let half = secs * 0.5;
    let input = |path: PathBuf, media, role, who: &str, start: f64| ComposeInput {
        path,
        media,
        role,
        participant: who.into(),
        start: Duration::from_secs_f64(start),
        end: Duration::from_secs_f64(secs),
        rotation: 0,
    };
    eprintln!("making {secs} s of inputs");
    let inputs = vec![
        input(
            make(d, "a.webm", "color=c=red:s=640x480:r=25", secs, Some("300k")),
            ComposeMedia::Video,
            ComposeRole::Camera,
            "a",
            0.0,
        ),
        input(
            make(d, "b.webm", "color=c=blue:s=640x480:r=25", secs - late, Some("300k")),
            ComposeMedia::Video,
            ComposeRole::Camera,
            "b",
            late,
        ),
        input(
            make(d, "s.webm", "testsrc2=s=1280x720:r=25", secs - half, Some("300k")),
            ComposeMedia::Video,
            ComposeRole::Screen,
            "a",
            half,
        ),
        input(
            make(d, "a_mic.webm", "sine=frequency=440:sample_rate=48000", secs, None),
            ComposeMedia::Audio,
            ComposeRole::Camera,
            "a",
            0.0,
        ),
        input(
            make(
                d,
                "b_mic.webm",
                "sine=frequency=880:sample_rate=48000",
                secs - late,
                None,
            ),
            ComposeMedia::Audio,
            ComposeRole::Camera,
            "b",
            late,
        ),
    ];
    let config = ComposeConfig::default();
    let total = Duration::from_secs_f64(secs);
    println!("| composer | call | call s | wall s | x realtime | CPU s | CPU s per call s | speed against the CLI (its wall / ours) |");
    println!("|---|---|---|---|---|---|---|---|");
    // The issue's case: one participant, a 640x360 camera at ~1 Mbit/s and a microphone.
    let one = vec![
        input(
            make(d, "one.webm", "testsrc2=s=640x360:r=30", secs, Some("1M")),
            ComposeMedia::Video,
            ComposeRole::Camera,
            "one",
            0.0,
        ),
        input(
            make(d, "one_mic.webm", "sine=frequency=440:sample_rate=48000", secs, None),
            ComposeMedia::Audio,
            ComposeRole::Camera,
            "one",
            0.0,
        ),
    ];
    compose_bench("one participant", &one, total, &config, d);
    compose_bench("two and a screen", &inputs, total, &config, d);
    let audio: Vec<&ComposeInput> = inputs.iter().filter(|i| i.media == ComposeMedia::Audio).collect();
    stereo_bench(&audio, total, d, secs);
}

/// One composition by `media::compose` and by the CLI on the same graph and inputs.
fn compose_bench(name: &str, inputs: &[ComposeInput], total: Duration, config: &ComposeConfig, d: &Path) {
    let secs = total.as_secs_f64();

    // The CLI gets the same description; its inputs are placed with -itsoffset and labelled
    // like the recorder's buffer sources.
    let video: Vec<&ComposeInput> = inputs.iter().filter(|i| i.media == ComposeMedia::Video).collect();
    let audio: Vec<&ComposeInput> = inputs.iter().filter(|i| i.media == ComposeMedia::Audio).collect();
    let mut labels = Vec::new();
    let mut cli = vec!["-v".to_string(), "error".into(), "-y".into()];
    for (n, i) in video.iter().chain(audio.iter()).enumerate() {
        cli.extend([
            "-itsoffset".into(),
            format!("{:.3}", i.start.as_secs_f64()),
            "-i".into(),
            i.path.to_string_lossy().into_owned(),
        ]);
        let (kind, label) = match i.media {
            ComposeMedia::Video => (
                "v",
                format!("v{}", video.iter().position(|v| std::ptr::eq(*v, *i)).unwrap()),
            ),
            ComposeMedia::Audio => (
                "a",
                format!("a{}", audio.iter().position(|a| std::ptr::eq(*a, *i)).unwrap()),
            ),
        };
        let pass = if kind == "v" { "null" } else { "anull" };
        labels.push(format!("[{n}:{kind}]{pass}[{label}]"));
    }
    let graph = format!(
        "{};{}",
        labels.join(";"),
        compose::filter_description(&video, &audio, total, &[], config)
    );
    let cli_out = d.join("cli.mp4");
    cli.extend([
        "-filter_complex".into(),
        graph,
        "-map".into(),
        "[vout]".into(),
        "-map".into(),
        "[aout]".into(),
        "-c:v".into(),
        "libx264".into(),
        "-preset".into(),
        config.preset.clone(),
        "-r".into(),
        config.fps.to_string(),
        "-c:a".into(),
        "aac".into(),
        "-b:a".into(),
        "128k".into(),
        "-movflags".into(),
        "+faststart".into(),
        cli_out.to_string_lossy().into_owned(),
    ]);

    let out = d.join("recorder.mp4");
    let (cpu0, _) = cpu();
    let t0 = Instant::now();
    compose::compose(inputs, total, &[], &out, config).expect("compose");
    let recorder_wall = t0.elapsed().as_secs_f64();
    let (cpu1, child0) = cpu();

    let t1 = Instant::now();
    let status = Command::new("ffmpeg").args(&cli).status().expect("ffmpeg CLI");
    assert!(status.success(), "ffmpeg CLI failed");
    let cli_wall = t1.elapsed().as_secs_f64();
    let (_, child1) = cpu();

    let recorder_cpu = cpu1 - cpu0;
    let cli_cpu = child1 - child0;
    println!(
        "| ffmpeg CLI, same filter graph | {name} | {secs:.0} | {cli_wall:.2} | {:.2} | {cli_cpu:.2} | {:.2} | 1.00 |",
        secs / cli_wall,
        cli_cpu / secs
    );
    println!(
        "| rtc-recorder media::compose | {name} | {secs:.0} | {recorder_wall:.2} | {:.2} | {recorder_cpu:.2} | {:.2} | {:.2} |",
        secs / recorder_wall,
        recorder_cpu / secs,
        cli_wall / recorder_wall
    );
}

/// The stereo pass (the compositor runs it after each composition) against the CLI doing the
/// same mix and encode.
fn stereo_bench(audio: &[&ComposeInput], total: Duration, d: &Path, secs: f64) {
    let sides: Vec<(ComposeInput, Side)> = audio
        .iter()
        .enumerate()
        .map(|(n, i)| ((*i).clone(), if n == 0 { Side::Left } else { Side::Right }))
        .collect();
    let mut cli = vec!["-v".to_string(), "error".into(), "-y".into()];
    let mut labels = Vec::new();
    for (n, (i, _)) in sides.iter().enumerate() {
        cli.extend([
            "-itsoffset".into(),
            format!("{:.3}", i.start.as_secs_f64()),
            "-i".into(),
            i.path.to_string_lossy().into_owned(),
        ]);
        labels.push(format!("[{n}:a]anull[a{n}]"));
    }
    let graph = format!(
        "{};{}",
        labels.join(";"),
        stereo::stereo_description(1, sides.len() - 1, total, StereoFormat::Opus)
    );
    let cli_out = d.join("cli-stereo.opus");
    cli.extend([
        "-filter_complex".into(),
        graph,
        "-map".into(),
        "[aout]".into(),
        "-c:a".into(),
        "libopus".into(),
        "-b:a".into(),
        "64k".into(),
        cli_out.to_string_lossy().into_owned(),
    ]);
    let out = d.join("recorder-stereo.opus");
    let (cpu0, _) = cpu();
    let t0 = Instant::now();
    stereo::compose_stereo(&sides, total, &out, StereoFormat::Opus).expect("stereo");
    let recorder_wall = t0.elapsed().as_secs_f64();
    let (cpu1, child0) = cpu();
    let t1 = Instant::now();
    let status = Command::new("ffmpeg").args(&cli).status().expect("ffmpeg CLI");
    assert!(status.success(), "ffmpeg CLI failed on the stereo mix");
    let cli_wall = t1.elapsed().as_secs_f64();
    let (_, child1) = cpu();
    let (recorder_cpu, cli_cpu) = (cpu1 - cpu0, child1 - child0);
    println!();
    println!("| stereo mixer | call s | wall s | x realtime | CPU s | CPU s per call s | ratio (wall) |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| ffmpeg CLI, same filter graph | {secs:.0} | {cli_wall:.2} | {:.1} | {cli_cpu:.2} | {:.3} | 1.00 |",
        secs / cli_wall,
        cli_cpu / secs
    );
    println!(
        "| rtc-recorder media::stereo | {secs:.0} | {recorder_wall:.2} | {:.1} | {recorder_cpu:.2} | {:.3} | {:.2} |",
        secs / recorder_wall,
        recorder_cpu / secs,
        recorder_wall / cli_wall
    );
}
