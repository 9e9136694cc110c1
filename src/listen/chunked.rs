//! Where a chunked request body ends, decided strictly (RFC 9112 7.1) before Pingora reads
//! it.
//!
//! Pingora's chunk decoder and httparse's `parse_chunk_size` both take an empty size line
//! for the last chunk and accept a bare LF inside an extension. A proxy that ends a body
//! where its upstream would not is how a request is smuggled: with the body
//! `8\r\nhello\r\n0\r\n\r\n`, the empty line ended the body and the client's next request
//! was swallowed as "trailer fields". So this validator runs over every byte first and
//! refuses, with a 400, anything but:
//!
//! ```text
//! chunk      = 1*16HEXDIG [ ext ] CRLF data CRLF
//! last-chunk = 1*16HEXDIG(=0) [ ext ] CRLF *( field-line CRLF ) CRLF
//! ext        = (";" / SP / HTAB) *(VCHAR / obs-text / SP / HTAB)     (no CR, LF or CTL)
//! ```
//!
//! Trailer lines are parsed as header fields by httparse. It only validates; the bytes go
//! to Pingora unchanged.

use std::fmt;

/// A size line longer than this (extensions included) is refused.
const MAX_SIZE_LINE: usize = 4096;
/// All trailer lines together.
const MAX_TRAILERS: usize = 8192;

/// The framing of a request body was malformed. Carried inside the `io::Error` the client
/// stream returns, so the proxy can answer 400 instead of treating it as a dropped client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingError(pub &'static str);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed chunked body: {}", self.0)
    }
}

impl std::error::Error for FramingError {}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Size { digits: u8, value: u64 },
    Ext { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    line_len: usize,
    trailer: Vec<u8>,
    trailers_total: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0, value: 0 },
            line_len: 0,
            trailer: Vec::new(),
            trailers_total: 0,
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    gatehouse_plugins::ascii::hex_value(b).map(u64::from)
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Runs `data` through the validator. `Ok(Some(n))`: the body ended after its first `n`
    /// bytes (the rest belongs to the next request); `Ok(None)`: all of it is body and more
    /// is expected.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, FramingError> {
        let mut i = 0;
        while i < data.len() {
            if let State::Data(left) = self.state {
                // The bulk of a body: skip over data without looking at each byte.
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                self.state = if left == take { State::DataCr } else { State::Data(left - take) };
                continue;
            }
            let b = data[i];
            i += 1;
            self.step(b)?;
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn step(&mut self, b: u8) -> Result<(), FramingError> {
        self.state = match std::mem::replace(&mut self.state, State::Done) {
            State::Size { digits, value } => match (hex(b), b) {
                (Some(d), _) if digits < 16 => State::Size {
                    digits: digits + 1,
                    value: value << 4 | d,
                },
                (Some(_), _) => return Err(FramingError("chunk size too large")),
                _ if digits == 0 => return Err(FramingError("missing chunk size")),
                (None, b';' | b' ' | b'\t') => {
                    self.line_len = usize::from(digits) + 1;
                    State::Ext { value }
                }
                (None, b'\r') => State::SizeLf { value },
                _ => return Err(FramingError("invalid chunk size")),
            },
            State::Ext { value } => {
                self.line_len += 1;
                if self.line_len > MAX_SIZE_LINE {
                    return Err(FramingError("chunk extension too long"));
                }
                match b {
                    b'\r' => State::SizeLf { value },
                    b'\t' => State::Ext { value },
                    0..=31 | 127 => return Err(FramingError("control character in chunk extension")),
                    _ => State::Ext { value },
                }
            }
            State::SizeLf { value } => {
                if b != b'\n' {
                    return Err(FramingError("chunk size line not ended by CRLF"));
                }
                self.line_len = 0;
                if value == 0 {
                    State::TrailerStart
                } else {
                    State::Data(value)
                }
            }
            State::Data(left) if left > 1 => State::Data(left - 1),
            State::Data(_) => State::DataCr,
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size { digits: 0, value: 0 },
            State::DataCr | State::DataLf => return Err(FramingError("chunk data not followed by CRLF")),
            State::TrailerStart if b == b'\r' => State::FinalLf,
            State::TrailerStart | State::Trailer => {
                if b == b'\r' {
                    State::TrailerLf
                } else if b == b'\n' {
                    return Err(FramingError("bare LF in trailer"));
                } else {
                    self.trailers_total += 1;
                    if self.trailers_total > MAX_TRAILERS {
                        return Err(FramingError("trailer section too large"));
                    }
                    self.trailer.push(b);
                    State::Trailer
                }
            }
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(FramingError("trailer line not ended by CRLF"));
                }
                self.check_trailer_line()?;
                State::TrailerStart
            }
            State::FinalLf if b == b'\n' => State::Done,
            State::FinalLf => return Err(FramingError("body not ended by CRLF")),
            State::Done => return Err(FramingError("data after the end of the body")),
        };
        Ok(())
    }

    /// One trailer line must be one header field, as httparse reads header fields.
    fn check_trailer_line(&mut self) -> Result<(), FramingError> {
        let mut line = std::mem::take(&mut self.trailer);
        line.extend_from_slice(b"\r\n\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 1];
        match httparse::parse_headers(&line, &mut fields) {
            Ok(httparse::Status::Complete((n, parsed))) if n == line.len() && parsed.len() == 1 => Ok(()),
            _ => Err(FramingError("trailer line is not a header field")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Where the body ends, feeding `body` in pieces of `step` bytes.
    fn end(body: &[u8], step: usize) -> Result<Option<usize>, FramingError> {
        let mut c = Chunked::default();
        let mut at = 0;
        for piece in body.chunks(step.max(1)) {
            if let Some(n) = c.feed(piece)? {
                return Ok(Some(at + n));
            }
            at += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn well_formed_bodies_end_where_they_end() {
        let next = b"GET / HTTP/1.1\r\n";
        for body in [
            &b"5\r\nhello\r\n0\r\n\r\n"[..],
            b"5;ext=1;q=\"a b\"\r\nhello\r\n00\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\nx-check: 1\r\ny: 2\r\n\r\n",
            b"0\r\n\r\n",
        ] {
            let mut input = body.to_vec();
            input.extend_from_slice(next);
            for step in [1, 2, 3, 7, input.len()] {
                assert_eq!(
                    end(&input, step),
                    Ok(Some(body.len())),
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        assert_eq!(end(b"5\r\nhel", 2), Ok(None));
    }

    #[test]
    fn the_smuggling_shapes_are_refused() {
        for body in [
            &b"8\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n"[..],
            b"\r\n\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx: 1\n\r\n",
            b"10000000000000000\r\nx",
            b"-1\r\n",
            b" 5\r\nhello\r\n",
        ] {
            assert!(
                end(body, 1).is_err() && end(body, body.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest! {
        /// Any bytes get an answer (an end, more needed, or a refusal) and never a panic, and
        /// the answer does not depend on how the bytes were split.
        #[test]
        fn the_split_does_not_change_the_answer(body in proptest::collection::vec(prop_oneof![
            Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b'5'), Just(b';'), Just(b'a'), Just(b':'), Just(b' ')
        ], 0..64), step in 1usize..9) {
            prop_assert_eq!(end(&body, step), end(&body, body.len()));
        }
    }
}
