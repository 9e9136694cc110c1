//! grpc-web for browsers, on routes with `grpc_web = true`: Pingora's bridge state
//! (`GrpcWebCtx`: grpc-web to gRPC on the way in, trailers into a body frame on the way
//! out) driven from the proxy's own hooks, plus the text framing Pingora lacks
//! (`application/grpc-web-text`: the same bytes in base64, for browsers that cannot read
//! binary streams). Driven from the hooks rather than as a Pingora module, so requests that
//! are not grpc-web pay nothing for it.

use base64::Engine;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use pingora_core::protocols::http::bridge::grpc_web::GrpcWebCtx;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct WebBridge {
    bridge: GrpcWebCtx,
    text: bool,
    /// The answer is gRPC (not an HTTP error the upstream gave): its body is bridged.
    on: bool,
    /// Request characters short of a 4-character base64 group.
    req_carry: Vec<u8>,
    /// Response bytes short of a 3-byte group, kept so padding comes only at the end.
    resp_carry: Vec<u8>,
}

impl WebBridge {
    /// Turns the grpc-web request into a gRPC one for the upstream.
    pub fn start(req: &mut RequestHeader, text: bool) -> Result<Box<WebBridge>> {
        let mut bridge = GrpcWebCtx::default();
        bridge.init();
        if text {
            // The bridge knows grpc-web; the text part is ours.
            let ct = req
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.to_ascii_lowercase()
                        .replacen("application/grpc-web-text", "application/grpc-web", 1)
                })
                .unwrap_or_default();
            req.insert_header(CONTENT_TYPE, ct)?;
        }
        bridge.request_header_filter(req);
        Ok(Box::new(WebBridge {
            bridge,
            text,
            on: true,
            req_carry: Vec::new(),
            resp_carry: Vec::new(),
        }))
    }

    /// The request the upstream gets: a text body shrinks when decoded, so its length goes
    /// (the client's own request keeps it: it says how much to read).
    pub fn upstream_request(&self, up: &mut RequestHeader) {
        if self.text {
            up.remove_header(&http::header::CONTENT_LENGTH);
        }
    }

    pub fn request_body(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<()> {
        if !self.text {
            return Ok(());
        }
        let mut all = std::mem::take(&mut self.req_carry);
        if let Some(b) = body.as_ref() {
            all.extend(b.iter().filter(|c| !c.is_ascii_whitespace()));
        }
        let whole = if end { all.len() } else { all.len() - all.len() % 4 };
        self.req_carry = all.split_off(whole);
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // Group by group: padding may end each run of messages a client encoded apart.
        for group in all.chunks(4) {
            B64.decode_vec(group, &mut out)
                .map_err(|e| Error::because(ErrorType::HTTPStatus(400), "grpc-web-text body is not base64", e))?;
        }
        *body = Some(Bytes::from(out));
        Ok(())
    }

    pub fn response_header(&mut self, resp: &mut ResponseHeader) -> Result<()> {
        self.bridge.response_header_filter(resp);
        let ct = resp.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.starts_with("application/grpc-web") {
            // Not a gRPC answer (an HTTP error from the upstream): passed on as it is.
            self.on = false;
            return Ok(());
        }
        if self.text {
            let text = ct.replacen("application/grpc-web", "application/grpc-web-text", 1);
            resp.insert_header(CONTENT_TYPE, text)?;
        }
        Ok(())
    }

    pub fn response_body(&mut self, body: &mut Option<Bytes>, end: bool) {
        if self.on && self.text {
            let data = body.take().unwrap_or_default();
            *body = Some(self.encode(&data, end));
        }
    }

    /// The trailers as grpc-web's final body frame (base64 for text).
    pub fn trailers(&mut self, t: &mut http::HeaderMap) -> Result<Option<Bytes>> {
        if !self.on {
            return Ok(None);
        }
        let Some(frame) = self.bridge.response_trailer_filter(t)? else {
            return Ok(None);
        };
        Ok(Some(if self.text { self.encode(&frame, true) } else { frame }))
    }

    fn encode(&mut self, data: &[u8], last: bool) -> Bytes {
        let mut all = std::mem::take(&mut self.resp_carry);
        all.extend_from_slice(data);
        let whole = if last { all.len() } else { all.len() - all.len() % 3 };
        self.resp_carry = all.split_off(whole);
        Bytes::from(B64.encode(&all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_both_ways_across_chunk_boundaries() {
        let mut req = RequestHeader::build("POST", b"/s.S/M", None).unwrap();
        req.insert_header("content-type", "application/grpc-web-text+proto").unwrap();
        let mut m = WebBridge::start(&mut req, true).unwrap();
        assert_eq!(req.headers["content-type"], "application/grpc+proto");
        assert_eq!(req.headers["te"], "trailers");
        let payload = b"\x00\x00\x00\x00\x05hello";
        let text = B64.encode(payload);
        let mut got = Vec::new();
        for (i, piece) in text.as_bytes().chunks(3).enumerate() {
            let last = (i + 1) * 3 >= text.len();
            let mut b = Some(Bytes::copy_from_slice(piece));
            m.request_body(&mut b, last).unwrap();
            got.extend_from_slice(&b.unwrap());
        }
        assert_eq!(got, payload);

        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "application/grpc+proto").unwrap();
        m.response_header(&mut resp).unwrap();
        assert_eq!(resp.headers["content-type"], "application/grpc-web-text+proto");
        let mut out = Vec::new();
        for piece in payload.chunks(4) {
            let mut b = Some(Bytes::copy_from_slice(piece));
            m.response_body(&mut b, false);
            out.extend_from_slice(&b.unwrap());
        }
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        out.extend_from_slice(&m.trailers(&mut t).unwrap().unwrap());
        let decoded = B64.decode(&out).unwrap();
        assert_eq!(&decoded[..payload.len()], payload);
        assert_eq!(decoded[payload.len()], 0x80, "the trailers frame follows");
        assert!(String::from_utf8_lossy(&decoded).contains("grpc-status:0"));
    }
}
