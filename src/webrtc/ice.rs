//! The socket side of ICE that str0m leaves to its user: which addresses to offer as host
//! candidates, and on which of them a datagram arrived.
//!
//! str0m matches a STUN request to a local candidate by the address it was sent to, so a
//! socket bound to 0.0.0.0 or :: must learn each datagram's destination: `IP_PKTINFO` and
//! `IPV6_RECVPKTINFO` give it with every `recvmsg`. Replies leave by the kernel's route,
//! whose source address on a LAN is the address the client reached.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The addresses to offer when bound to `bound`: that address itself, or for 0.0.0.0 (::)
/// every IPv4 (and IPv6) address of the host's interfaces, read at each offer so an address
/// that DHCP gave after start is offered too. Link-local IPv6 addresses (fe80::/10) are left
/// out (they need a scope a candidate cannot carry), and loopback comes last.
pub fn local_addresses(bound: IpAddr) -> Vec<IpAddr> {
    if !bound.is_unspecified() {
        return vec![bound];
    }
    let v6 = bound.is_ipv6();
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(a) = ifa.address else { continue };
            let ip = if let Some(s) = a.as_sockaddr_in() {
                IpAddr::V4(s.ip())
            } else if let Some(s) = a.as_sockaddr_in6() {
                if !v6 || (s.ip().segments()[0] & 0xffc0) == 0xfe80 {
                    continue;
                }
                IpAddr::V6(s.ip())
            } else {
                continue;
            };
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out.sort_by_key(|ip| ip.is_loopback());
    if out.is_empty() {
        out.push(if v6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        });
    }
    out
}

/// Asks the kernel for each datagram's destination address (on a wildcard socket).
pub fn enable_destination_info(socket: &UdpSocket, bound: SocketAddr) {
    if !bound.ip().is_unspecified() {
        return;
    }
    let r = match bound {
        SocketAddr::V4(_) => socket::setsockopt(socket, sockopt::Ipv4PacketInfo, &true),
        SocketAddr::V6(_) => {
            // A dual-stack socket needs both: IPv4 datagrams carry IP_PKTINFO.
            let _ = socket::setsockopt(socket, sockopt::Ipv4PacketInfo, &true);
            socket::setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)
        }
    };
    if let Err(e) = r {
        tracing::warn!("WebRTC: no packet info on the UDP socket ({e}); clients may not connect");
    }
}

/// The next datagram: its length in `buf`, its source, and the address it was sent to.
pub async fn recv(
    socket: &UdpSocket,
    bound: SocketAddr,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, SocketAddr)> {
    if !bound.ip().is_unspecified() {
        let (n, from) = socket.recv_from(buf).await?;
        return Ok((n, unmap(from), bound));
    }
    socket
        .async_io(Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo);
            let mut iov = [IoSliceMut::new(&mut *buf)];
            let msg = socket::recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)?;
            let from = msg
                .address
                .and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|s| SocketAddr::new(IpAddr::V4(s.ip()), s.port()))
                        .or_else(|| {
                            a.as_sockaddr_in6()
                                .map(|s| SocketAddr::new(IpAddr::V6(s.ip()), s.port()))
                        })
                })
                .ok_or_else(|| std::io::Error::other("datagram without a source"))?;
            let mut to = bound;
            for c in msg.cmsgs().into_iter().flatten() {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(i) => {
                        let ip = Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr));
                        to = SocketAddr::new(IpAddr::V4(ip), bound.port());
                    }
                    ControlMessageOwned::Ipv6PacketInfo(i) => {
                        let ip = Ipv6Addr::from(i.ipi6_addr.s6_addr);
                        to = SocketAddr::new(IpAddr::V6(ip), bound.port());
                    }
                    _ => {}
                }
            }
            Ok((msg.bytes, unmap(from), unmap(to)))
        })
        .await
}

/// An IPv4 address seen through a dual-stack socket (`::ffff:a.b.c.d`) as plain IPv4, as
/// the candidates name it.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_address_is_the_only_candidate_and_a_wildcard_lists_interfaces() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(local_addresses(lo), [lo]);
        let all = local_addresses("0.0.0.0".parse().unwrap());
        assert!(all.contains(&lo), "{all:?}");
        assert!(all.iter().all(|ip| ip.is_ipv4()), "{all:?}");
        assert_eq!(all.last(), Some(&lo), "loopback last: {all:?}");
    }

    #[tokio::test]
    async fn a_wildcard_socket_learns_where_each_datagram_was_sent() {
        let s = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let bound = s.local_addr().unwrap();
        enable_destination_info(&s, bound);
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(b"hello", ("127.0.0.1", bound.port()))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, from, to) = recv(&s, bound, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, c.local_addr().unwrap());
        assert_eq!(to, SocketAddr::from(([127, 0, 0, 1], bound.port())));
    }
}
