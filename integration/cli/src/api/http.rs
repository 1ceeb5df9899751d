//! Just enough HTTP/1.1 for a local control API, without I/O: one request per connection
//! (`Connection: close`), bodies sized by Content-Length and bounded, responses with JSON bodies.
//! Anyone on the host who can reach the socket is a peer to distrust: sizes are capped before
//! anything is buffered.

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 8 << 10;
/// Longest request body.
pub const MAX_BODY: usize = 64 << 10;

/// A request that cannot be served; each maps to a status code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("body of {0} bytes is over the {MAX_BODY}-byte limit")]
    BodyTooLarge(usize),
    #[error("chunked bodies are not accepted: send Content-Length")]
    Chunked,
}

impl HttpError {
    /// The status code answering this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::Chunked => 411,
        }
    }
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads a request from the bytes received so far: `Ok(None)` until it is complete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Chunked);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| HttpError::Malformed("bad Content-Length".into()))?;
        }
    }
    if length > MAX_BODY {
        return Err(HttpError::BodyTooLarge(length));
    }
    if buf.len() < head_len + length {
        return Ok(None);
    }
    let path = req.path.unwrap_or("/");
    Ok(Some(Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.split('?').next().unwrap_or(path).to_string(),
        body: buf[head_len..head_len + length].to_vec(),
    }))
}

/// A response: a status and an optional JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(body: serde_json::Value) -> Response {
        Response {
            status: 200,
            body: Some(body),
        }
    }

    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
        }
    }

    /// An error, its message where Firecracker's API puts it.
    pub fn error(status: u16, message: impl std::fmt::Display) -> Response {
        Response {
            status,
            body: Some(serde_json::json!({ "fault_message": message.to_string() })),
        }
    }

    /// The response's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Payload Too Large",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let body = self
            .body
            .as_ref()
            .map(|b| b.to_string().into_bytes())
            .unwrap_or_default();
        let mut out = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\n", self.status);
        if !body.is_empty() {
            out.push_str("Content-Type: application/json\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut out = out.into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

/// Reads a whole response (the server closes the connection after it).
pub fn parse_response(buf: &[u8]) -> Result<Response, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::Malformed("truncated response".into()))
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let status = resp
        .code
        .ok_or_else(|| HttpError::Malformed("no status".into()))?;
    let body = &buf[head_len..];
    let body = if body.is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice(body)
                .map_err(|e| HttpError::Malformed(format!("response body: {e}")))?,
        )
    };
    Ok(Response { status, body })
}

/// A request's bytes on the wire (for the client).
pub fn encode_request(method: &str, path: &str, body: Option<&serde_json::Value>) -> Vec<u8> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_once_complete() {
        let wire = encode_request(
            "PATCH",
            "/vm",
            Some(&serde_json::json!({"state": "Paused"})),
        );
        for cut in 0..wire.len() {
            assert_eq!(parse_request(&wire[..cut]).unwrap(), None, "cut at {cut}");
        }
        let req = parse_request(&wire).unwrap().unwrap();
        assert_eq!(req.method, "PATCH");
        assert_eq!(req.path, "/vm");
        assert_eq!(req.body, br#"{"state":"Paused"}"#);
        let q = parse_request(b"GET /vm?x=1 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((q.path.as_str(), q.body.len()), ("/vm", 0));
    }

    #[test]
    fn oversized_chunked_and_garbage_requests_are_refused() {
        let big = format!(
            "PUT /snapshot/create HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(
            parse_request(big.as_bytes()),
            Err(HttpError::BodyTooLarge(MAX_BODY + 1))
        );
        let mut long_head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long_head.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_request(&long_head), Err(HttpError::HeadTooLarge));
        let chunked = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_request(chunked), Err(HttpError::Chunked));
        assert!(matches!(
            parse_request(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        let bad_len = b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(
            parse_request(bad_len),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn responses_round_trip() {
        let r = Response::error(409, "the VM is already paused");
        let back = parse_response(&r.encode()).unwrap();
        assert_eq!(back, r);
        let empty = parse_response(&Response::no_content().encode()).unwrap();
        assert_eq!(empty, Response::no_content());
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
