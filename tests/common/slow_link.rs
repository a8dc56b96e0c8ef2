//! A network link with delay and a rate limit, between two network namespaces the test makes
//! itself: picamd serves in one (`SERVER_IP`), the client reads in the other (`CLIENT_IP`).
//!
//! This kernel has no `netem` qdisc, so the delay is a delay line in this process: each
//! namespace has a TUN device, and every IP packet between them is read from one, held for
//! the one-way delay and written to the other — real end-to-end TCP, with the delay on the
//! wire where it belongs. The rate is Linux's token bucket filter (`tbf`) on the server
//! side's device, whose `latency` bounds its queue like a router's buffer.
//!
//! Needs root (namespaces, `/dev/net/tun`); [`SlowLink::new`] says why it could not be made.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};

pub const SERVER_IP: &str = "10.77.0.1";
pub const CLIENT_IP: &str = "10.77.0.2";

/// The two namespaces, the delay line's threads, and the devices they hold open.
pub struct SlowLink {
    pub server_ns: String,
    pub client_ns: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How the server side's traffic is shaped.
pub struct Shape {
    /// One-way delay, applied in each direction (round trip = twice this).
    pub one_way: Duration,
    /// `tbf` rate (`"5mbit"`), or none for a link as fast as the machine.
    pub rate: Option<&'static str>,
}

impl SlowLink {
    /// Makes the namespaces and the link, or says why it cannot (not root, no TUN, …).
    pub fn new(shape: Shape) -> Result<SlowLink, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("picamd-{}-{n}", std::process::id());
        // From here on, Drop removes whatever was made.
        let mut link = SlowLink {
            server_ns: format!("{base}-srv"),
            client_ns: format!("{base}-cli"),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        run("ip", &["netns", "add", &link.server_ns])?;
        run("ip", &["netns", "add", &link.client_ns])?;
        let server_ns = link.server_ns.clone();
        let client_ns = link.client_ns.clone();
        let (server_tun, client_tun) = std::thread::spawn(move || {
            Ok::<_, String>((open_tun_in(&server_ns)?, open_tun_in(&client_ns)?))
        })
        .join()
        .map_err(|_| "TUN thread panicked".to_owned())??;
        for (ns, me, peer) in [
            (&link.server_ns, SERVER_IP, CLIENT_IP),
            (&link.client_ns, CLIENT_IP, SERVER_IP),
        ] {
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &["-n", ns, "addr", "add", me, "peer", peer, "dev", TUN_NAME],
            )?;
            run("ip", &["-n", ns, "link", "set", TUN_NAME, "up"])?;
        }
        if let Some(rate) = shape.rate {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &link.server_ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    TUN_NAME,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "16kb",
                    "latency",
                    "100ms",
                ],
            )?;
        }
        let server_tun = Arc::new(server_tun);
        let client_tun = Arc::new(client_tun);
        for (from, to) in [
            (server_tun.clone(), client_tun.clone()),
            (client_tun, server_tun),
        ] {
            let stop = link.stop.clone();
            let delay = shape.one_way;
            link.threads.push(std::thread::spawn(move || {
                delay_line(&from, &to, delay, &stop)
            }));
        }
        Ok(link)
    }

    /// Runs `f` on a thread inside the client namespace: sockets it opens are there.
    pub fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.client_ns.clone();
        std::thread::spawn(move || {
            enter(&ns).expect("enter the client namespace");
            f()
        })
        .join()
        .expect("client thread")
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

const TUN_NAME: &str = "pt0";

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Moves this thread into the named network namespace.
fn enter(ns: &str) -> Result<(), String> {
    let f = File::open(format!("/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {ns}: {e}"))
}

/// A TUN device (IP packets, no extra header) named [`TUN_NAME`] in namespace `ns`.
fn open_tun_in(ns: &str) -> Result<File, String> {
    enter(ns)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    // struct ifreq: 16 bytes of name, then the flags (a short) in a 24-byte union.
    let mut ifreq = [0u8; 40];
    ifreq[..TUN_NAME.len()].copy_from_slice(TUN_NAME.as_bytes());
    let flags = (nix::libc::IFF_TUN | nix::libc::IFF_NO_PI) as i16;
    ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
    /// `_IOW('T', 202, int)`.
    const TUNSETIFF: nix::libc::c_ulong = 0x4004_54ca;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which fits in the 40 bytes given.
    let r = unsafe { nix::libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) };
    if r < 0 {
        return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
    }
    // Non-blocking, so the delay line can poll both its input and its clock.
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl on a descriptor this function owns.
    unsafe {
        let fl = nix::libc::fcntl(fd, nix::libc::F_GETFL);
        nix::libc::fcntl(fd, nix::libc::F_SETFL, fl | nix::libc::O_NONBLOCK);
    }
    Ok(file)
}

/// Forwards packets from `from` to `to`, each `delay` after it was read, until `stop`.
fn delay_line(from: &File, to: &File, delay: Duration, stop: &AtomicBool) {
    let mut held: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut buf = vec![0u8; 65536];
    let (mut input, mut output) = (from, to);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, packet) = held.pop_front().expect("front");
            // A full device queue drops the packet, as a wire would.
            let _ = output.write(&packet);
        }
        let wait = held
            .front()
            .map_or(Duration::from_millis(10), |(due, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(10));
        let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(wait.as_millis().max(1) as i32).expect("timeout");
        if poll(&mut fds, timeout).unwrap_or(0) == 0 {
            continue;
        }
        while let Ok(n) = input.read(&mut buf) {
            held.push_back((Instant::now() + delay, buf[..n].to_vec()));
        }
    }
}
