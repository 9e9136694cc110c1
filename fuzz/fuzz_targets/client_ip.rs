//! The client-address parser over any X-Forwarded-For and Forwarded lines.
#![no_main]
use gatehouse::config::ClientIpHeader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", v.clone());
            headers.append("forwarded", v);
        }
    }
    let trusted = |ip: std::net::IpAddr| ip.is_loopback();
    let _ = gatehouse::proxy::identity::client_ip(&headers, ClientIpHeader::XForwardedFor, trusted);
    let _ = gatehouse::proxy::identity::client_ip(&headers, ClientIpHeader::Forwarded, trusted);
});
