//! HTTP/1.1 messages, just enough for a curl-like GET against the lab's web servers.
//!
//! Server side: the bytes read from a connection go through [`head_len`] until the header
//! section is complete, then [`parse_request`]; [`route`] turns the request into the
//! [`Response`] to [`Response::encode`] (the page for `GET /`, an error status otherwise).
//!
//! Client side: [`encode_get`] builds the request; the whole reply, read until the server
//! closes, goes through [`parse_response`], which checks the status line, the headers and the
//! body length.

/// Most bytes a request's header section may take.
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Most bytes a response may take.
pub const MAX_RESPONSE_LEN: usize = 1 << 20;

/// What is wrong with an HTTP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The header section does not end (no empty line).
    #[error("header section does not end")]
    Incomplete,
    /// The header section is not text.
    #[error("header section is not UTF-8")]
    NotText,
    /// The request line is not `METHOD target HTTP/1.x`.
    #[error("malformed request line {0:?}")]
    RequestLine(String),
    /// The status line is not `HTTP/1.x code reason`.
    #[error("malformed status line {0:?}")]
    StatusLine(String),
    /// A header line is not `name: value`.
    #[error("malformed header line {0:?}")]
    HeaderLine(String),
    /// A Content-Length that is not a number.
    #[error("Content-Length {0:?} is not a number")]
    ContentLength(String),
    /// A body shorter than its Content-Length.
    #[error("body of {got} bytes, Content-Length says {expected}")]
    BodyLength {
        /// Content-Length.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A transfer coding the client does not implement.
    #[error("unsupported Transfer-Encoding {0:?}")]
    TransferEncoding(String),
}

/// Header fields, in order: (name as received, value without surrounding blanks).
pub type Headers = Vec<(String, String)>;

/// A request's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method (`GET`).
    pub method: String,
    /// Request target (`/`).
    pub target: String,
    /// Header fields, in order.
    pub headers: Headers,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Header fields, in order.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// An HTML response from `server`, closing the connection after it.
    pub fn html(status: u16, reason: &str, server: &str, body: &str) -> Self {
        Self {
            status,
            reason: reason.to_string(),
            headers: vec![
                ("Server".into(), server.into()),
                ("Content-Type".into(), "text/html".into()),
                ("Content-Length".into(), body.len().to_string()),
                ("Connection".into(), "close".into()),
            ],
            body: body.as_bytes().to_vec(),
        }
    }

    /// The value of the first header field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The response on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

impl Request {
    /// The value of the first header field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Length of the header section at the start of `buf`, blank line included, once it is
/// complete.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a request's header section (everything up to and including the blank line).
pub fn parse_request(head: &[u8]) -> Result<Request, HttpError> {
    let (first, headers) = parse_head(head)?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::RequestLine(first.to_string()));
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !is_http1(version) {
        return Err(HttpError::RequestLine(first.to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
    })
}

/// What a server whose only page is `page` answers to `request` (a parse result: a request
/// that could not be parsed gets 400).
pub fn route(request: &Result<Request, HttpError>, server: &str, page: &str) -> Response {
    match request {
        Err(_) => Response::html(400, "Bad Request", server, &error_page(400, "Bad Request")),
        Ok(r) if r.method != "GET" => {
            let mut response =
                Response::html(405, "Not Allowed", server, &error_page(405, "Not Allowed"));
            response.headers.push(("Allow".into(), "GET".into()));
            response
        }
        Ok(r) if r.target == "/" || r.target == "/index.html" => {
            Response::html(200, "OK", server, page)
        }
        Ok(_) => Response::html(404, "Not Found", server, &error_page(404, "Not Found")),
    }
}

/// A `GET /` request for `host`, as curl sends it.
pub fn encode_get(host: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Parses a whole response, read until the server closed the connection.
pub fn parse_response(bytes: &[u8]) -> Result<Response, HttpError> {
    let head_end = head_len(bytes).ok_or(HttpError::Incomplete)?;
    let (first, headers) = parse_head(&bytes[..head_end])?;
    let bad_status = || HttpError::StatusLine(first.to_string());
    let (version, rest) = first.split_once(' ').ok_or_else(bad_status)?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if !is_http1(version) || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_status());
    }
    let status = code.parse().map_err(|_| bad_status())?;
    if let Some(coding) = find_header(&headers, "Transfer-Encoding") {
        return Err(HttpError::TransferEncoding(coding.to_string()));
    }
    let mut body = bytes[head_end..].to_vec();
    if let Some(length) = find_header(&headers, "Content-Length") {
        let expected: usize = length
            .parse()
            .map_err(|_| HttpError::ContentLength(length.to_string()))?;
        if body.len() < expected {
            return Err(HttpError::BodyLength {
                expected,
                got: body.len(),
            });
        }
        body.truncate(expected);
    }
    Ok(Response {
        status,
        reason: reason.to_string(),
        headers,
        body,
    })
}

/// The start line and the header fields of a header section.
fn parse_head(head: &[u8]) -> Result<(&str, Headers), HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::NotText)?;
    let text = text.strip_suffix("\r\n\r\n").ok_or(HttpError::Incomplete)?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::HeaderLine(line.to_string()))?;
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
        if !name_ok {
            return Err(HttpError::HeaderLine(line.to_string()));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok((first, headers))
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn is_http1(version: &str) -> bool {
    version == "HTTP/1.1" || version == "HTTP/1.0"
}

fn error_page(status: u16, reason: &str) -> String {
    format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_requests_parse() {
        let raw = encode_get("nginx");
        assert_eq!(head_len(&raw), Some(raw.len()));
        let request = parse_request(&raw).unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.target, "/");
        assert_eq!(request.header("host"), Some("nginx"));
        assert_eq!(request.header("USER-AGENT"), Some("curl/8.5.0"));
    }

    #[test]
    fn head_len_waits_for_the_blank_line() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    }

    #[test]
    fn malformed_requests_are_refused() {
        for raw in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"G3T / HTTP/1.1\r\n\r\n",
            b"GET index HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n\xff: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            let parsed = parse_request(raw);
            assert!(parsed.is_err(), "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(route(&parsed, "t", "page").status, 400);
        }
    }

    #[test]
    fn routes() {
        let page = "<h1>It works!</h1>";
        let get = |raw: &str| route(&parse_request(raw.as_bytes()), "httpd", page);
        let ok = get("GET / HTTP/1.1\r\nHost: httpd\r\n\r\n");
        assert_eq!((ok.status, ok.body.as_slice()), (200, page.as_bytes()));
        assert_eq!(ok.header("content-length"), Some("18"));
        assert_eq!(get("GET /index.html HTTP/1.0\r\n\r\n").status, 200);
        assert_eq!(get("GET /missing HTTP/1.1\r\n\r\n").status, 404);
        let post = get("POST / HTTP/1.1\r\n\r\n");
        assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
    }

    #[test]
    fn responses_round_trip() {
        let sent = Response::html(200, "OK", "nginx/1.25.4", "<p>hi</p>\n");
        let parsed = parse_response(&sent.encode()).unwrap();
        assert_eq!(parsed, sent);
        let mut with_trailing = sent.encode();
        with_trailing.extend_from_slice(b"junk");
        assert_eq!(parse_response(&with_trailing).unwrap().body, b"<p>hi</p>\n");
    }

    #[test]
    fn malformed_responses_are_refused() {
        let cases: [(&[u8], HttpError); 6] = [
            (b"HTTP/1.1 200 OK\r\n", HttpError::Incomplete),
            (
                b"HTTP/1.1 20 OK\r\n\r\n",
                HttpError::StatusLine("HTTP/1.1 20 OK".into()),
            ),
            (
                b"SSH-2.0 x\r\n\r\n",
                HttpError::StatusLine("SSH-2.0 x".into()),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                HttpError::BodyLength {
                    expected: 10,
                    got: 5,
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
                HttpError::ContentLength("ten".into()),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                HttpError::TransferEncoding("chunked".into()),
            ),
        ];
        for (raw, err) in cases {
            assert_eq!(parse_response(raw), Err(err));
        }
        let no_length = parse_response(b"HTTP/1.0 204\r\n\r\n").unwrap();
        assert_eq!((no_length.status, no_length.reason.as_str()), (204, ""));
    }
}
