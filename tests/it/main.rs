//! The integration tests, one test binary (so the suite links once): each module starts
//! the real `picamd` binary and talks to it over real sockets. `common` is the support
//! they share with the benches (`benches/*.rs` include it by path).

#[path = "../common/mod.rs"]
mod common;

mod article_urls;
mod cli;
mod controls;
mod demand;
mod encoders;
mod ffmpeg_sources;
mod mjpeg;
mod passthrough;
mod persist;
mod publish;
mod recovery;
mod rtsp;
mod screen;
mod security;
mod service;
mod slow_clients;
mod snapshot;
mod streams;
mod tls;
mod upstream_mjpeg;
mod webrtc;
mod ws;
