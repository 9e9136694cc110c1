//! The PROXY protocol header (v1 text, v2 binary) an L4 load balancer puts before the
//! client's bytes. It is read under the header deadline and believed only from a peer in
//! `trusted_proxies`; the `ppp` crate parses it. The client address it carries replaces the
//! peer address in the connection's socket digest, so every later decision (client IP,
//! ip_restriction, limits, logs) sees the real client, and nothing downstream needs to know.

use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::{SocketDigest, Stream};
use pingora_timeout::fast_timeout::fast_timeout;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line the specification allows (`PROXY TCP6 <ip> <ip> <port> <port>\r\n`).
const V1_MAX: usize = 107;
/// A v2 header's own length is 16 bytes; load balancers add TLVs (AWS its VPC endpoint, some
/// the TLS facts). More than this is not a header a load balancer sends.
const V2_MAX: usize = 1024;

/// Why a connection's PROXY header was refused (the rejection metric's reason).
pub type Refused = &'static str;

/// Reads and parses the header. `Ok(None)`: a v2 LOCAL or v1 UNKNOWN header (the load
/// balancer's own health check), which keeps the peer address.
pub async fn read(stream: &mut Stream, deadline: Duration) -> Result<Option<SocketAddr>, Refused> {
    match fast_timeout(deadline, read_header(stream)).await {
        Ok(r) => r,
        Err(_) => Err("proxy_protocol_timeout"),
    }
}

async fn read_header(stream: &mut Stream) -> Result<Option<SocketAddr>, Refused> {
    // Every header is at least 12 bytes long ("PROXY UNKNOWN\r\n" is 15), so the first 12
    // can be read at once without taking any of the client's bytes.
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf).await.map_err(|_| "proxy_protocol_missing")?;
    if buf[..] == V2_SIGNATURE[..] {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[12..]).await.map_err(|_| "proxy_protocol_missing")?;
        let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if len > V2_MAX {
            return Err("proxy_protocol_too_long");
        }
        buf.resize(len, 0);
        stream.read_exact(&mut buf[16..]).await.map_err(|_| "proxy_protocol_missing")?;
        let h = ppp::v2::Header::try_from(&buf[..]).map_err(|_| "proxy_protocol_invalid")?;
        return Ok(match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            (_, ppp::v2::Addresses::IPv6(a)) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            _ => None,
        });
    }
    if !buf.starts_with(b"PROXY ") {
        return Err("proxy_protocol_missing");
    }
    // The line's end is found one byte at a time: the client's own bytes follow at once, and
    // they are not ours to take. (At most ~95 one-byte reads, once per connection.)
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err("proxy_protocol_too_long");
        }
        let b = stream.read_u8().await.map_err(|_| "proxy_protocol_missing")?;
        buf.push(b);
    }
    let h = ppp::v1::Header::try_from(&buf[..]).map_err(|_| "proxy_protocol_invalid")?;
    Ok(match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Unknown => None,
    })
}

/// Makes `client` the connection's peer address; the local address stays the socket's (it
/// names the listener).
pub fn set_peer(stream: &mut Stream, client: SocketAddr) {
    let local = stream.get_socket_digest().and_then(|d| d.local_addr().cloned());
    let digest = SocketDigest::from_raw_fd(stream.id());
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(client)));
    let _ = digest.local_addr.set(local);
    stream.set_socket_digest(digest);
}
