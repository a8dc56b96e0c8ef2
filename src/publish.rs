//! Publishing: a stream's H.264 pushed to a server built for fan-out (nginx-rtmp, MediaMTX,
//! a streaming platform), for when one Pi must serve more viewers than it can.
//!
//! Each `publish` URL of a stream gets a thread that consumes the hub's H.264 track (it
//! counts as a viewer, so the source and the encoder run while it publishes) and writes the
//! access units, Annex B, into a supervised ffmpeg child that muxes them without
//! re-encoding: `-f h264 -i pipe:0 -c copy -f flv rtmp://…` (RTMP, RTMPS) or
//! `-f rtsp rtsp://…` (RTSP ANNOUNCE/RECORD, over TCP).
//!
//! The pipe is written without blocking: a server that stalls fills ffmpeg's input pipe
//! (64 KiB), the consumer falls behind and the track skips it to the next keyframe, so
//! nothing queues in picamd; no progress for [`STALL`] restarts ffmpeg. ffmpeg exiting (the
//! server went away, refused the stream) restarts it after a backoff of 1 s doubling to 30 s,
//! back to 1 s after 30 s of publishing. What each publisher is doing, and why it last
//! failed, is posted to the hub for `/state` and `/metrics`.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::process::ChildStdin;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::ffmpeg_child::{ffmpeg_program, redact_url as redact, url_password, Feed, FfmpegChild};
use crate::hub::{Hub, Output, PublishState, Publisher};
use crate::shutdown::Shutdown;

/// No byte taken by ffmpeg for this long: the server is stuck; start over.
const STALL: Duration = Duration::from_secs(20);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Publishing this long resets the backoff.
const HEALTHY: Duration = Duration::from_secs(30);
/// Longest single wait: bounds how late shutdown is noticed.
const SLICE: Duration = Duration::from_millis(200);

/// ffmpeg's arguments for publishing to `url` at `fps`.
fn ffmpeg_args(url: &str, fps: u32) -> Vec<String> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "warning",
        // The input is a live raw H.264 stream, which carries no timestamps: ffmpeg stamps
        // the units at the configured rate and generates the packets' pts from that
        // (wall-clock stamps on arrival were tried: ffmpeg then reorders DTS and warns).
        "-fflags",
        "+genpts",
        "-f",
        "h264",
        "-framerate",
        &fps.max(1).to_string(),
        "-i",
        "pipe:0",
        "-c",
        "copy",
        "-an",
    ]
    .map(String::from)
    .to_vec();
    if url.starts_with("rtsp") {
        args.extend(["-f", "rtsp", "-rtsp_transport", "tcp"].map(String::from));
    } else {
        args.extend(["-f", "flv"].map(String::from));
    }
    args.push(url.to_owned());
    args
}

/// Starts one thread per URL; they end at shutdown.
pub fn start(
    hub: &Hub,
    urls: &[String],
    fps: u32,
    rt: tokio::runtime::Handle,
    shutdown: &Shutdown,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let publisher = hub.add_publisher(redact(url));
        let (hub, url, rt, shutdown) = (hub.clone(), url.clone(), rt.clone(), shutdown.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("publish-{i}"))
                .spawn(move || run(&hub, &publisher, &url, fps, &rt, &shutdown))?,
        );
    }
    Ok(threads)
}

fn run(
    hub: &Hub,
    publisher: &Publisher,
    url: &str,
    fps: u32,
    rt: &tokio::runtime::Handle,
    shutdown: &Shutdown,
) {
    let shown = redact(url);
    let mut backoff = BACKOFF_MIN;
    while !shutdown.is_cancelled() {
        publisher.set(PublishState::Connecting, None);
        let started = Instant::now();
        let result = publish_once(hub, publisher, url, fps, rt, shutdown);
        if shutdown.is_cancelled() {
            break;
        }
        if started.elapsed() >= HEALTHY {
            backoff = BACKOFF_MIN;
        }
        let why = match result {
            Ok(()) => "ffmpeg ended".to_owned(),
            Err(e) => e,
        };
        publisher.failed(&why);
        tracing::warn!(url = %shown, "publishing stopped: {why}; again in {backoff:?}");
        if shutdown.sleep_blocking(backoff) {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    publisher.set(PublishState::Stopped, None);
}

/// One ffmpeg's life: until it exits, stalls, or shutdown.
fn publish_once(
    hub: &Hub,
    publisher: &Publisher,
    url: &str,
    fps: u32,
    rt: &tokio::runtime::Handle,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let guard = hub.add_viewer(Output::Publish).map_err(|e| e.to_string())?;
    let mut consumer = hub.h264().consume(Some(guard));
    let mut child = FfmpegChild::spawn_with(
        &ffmpeg_program(),
        &ffmpeg_args(url, fps),
        url_password(url).map(String::from).into_iter().collect(),
        Feed::Writes,
    )
    .map_err(|e| format!("cannot start ffmpeg: {e}"))?;
    let mut stdin = child.take_stdin();
    fcntl(stdin.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| format!("ffmpeg's input pipe: {e}"))?;
    let mut announced = false;
    loop {
        // Wait for the next unit in slices, so shutdown and a dead ffmpeg are noticed.
        let unit = loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if let Some(status) = child.wait_exit(Duration::ZERO) {
                return Err(with_last(format!("ffmpeg exited ({status})"), &child));
            }
            match rt.block_on(async { tokio::time::timeout(SLICE, consumer.next()).await }) {
                Ok(Some(unit)) => break unit,
                Ok(None) => return Ok(()),
                Err(_) => continue,
            }
        };
        write_all(&mut stdin, &unit.data, shutdown, &child)?;
        publisher.sent(unit.data.len());
        if !announced {
            announced = true;
            publisher.set(PublishState::Publishing, None);
            tracing::info!(url = %redact(url), "publishing");
        }
    }
}

/// Writes all of `data` into the non-blocking pipe, waiting in slices for room.
fn write_all(
    stdin: &mut ChildStdin,
    mut data: &[u8],
    shutdown: &Shutdown,
    child: &FfmpegChild,
) -> Result<(), String> {
    let mut since = Instant::now();
    while !data.is_empty() {
        match stdin.write(data) {
            Ok(n) => {
                data = &data[n..];
                since = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if since.elapsed() >= STALL {
                    return Err(format!("stalled: ffmpeg took nothing for {STALL:?}"));
                }
                let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(SLICE.as_millis() as u16));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(with_last(format!("writing to ffmpeg: {e}"), child)),
        }
    }
    Ok(())
}

fn with_last(reason: String, child: &FfmpegChild) -> String {
    let last = child.last_stderr_line();
    if last.is_empty() {
        reason
    } else {
        format!("{reason}: {last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtmp_goes_out_as_flv_and_rtsp_over_tcp() {
        let a = ffmpeg_args("rtmp://h/live/cam", 30).join(" ");
        assert!(a.contains("-f h264 -framerate 30 "), "{a}");
        assert!(a.contains("-i pipe:0 -c copy"), "{a}");
        assert!(a.ends_with("-f flv rtmp://h/live/cam"), "{a}");
        let a = ffmpeg_args("rtsp://h:8554/cam", 15).join(" ");
        assert!(
            a.ends_with("-f rtsp -rtsp_transport tcp rtsp://h:8554/cam"),
            "{a}"
        );
    }
}
