//! Just enough HTTP/1.1 for the demo: one request per connection, bodies by Content-Length only,
//! every size bounded. Malformed input is an error value (answered 4xx), never a panic.

use std::io::{self, Read, Write};

/// Request line and headers together may not exceed this.
pub const HEAD_MAX_BYTES: usize = 16 * 1024;
pub const HEADERS_MAX: usize = 64;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request that cannot be served; each maps to one status.
#[derive(Debug)]
pub enum RequestError {
    /// 400, with what was wrong.
    Bad(String),
    /// 411: a body without Content-Length (chunked bodies are not accepted).
    LengthRequired,
    /// 413: the body is larger than allowed.
    TooLarge,
    /// 431: the request line and headers are too long.
    HeadTooLarge,
    /// The connection failed or timed out: nothing can be answered.
    Io(io::Error),
}

impl RequestError {
    pub fn status(&self) -> Option<(u16, String)> {
        match self {
            RequestError::Bad(why) => Some((400, format!("bad request: {why}\n"))),
            RequestError::LengthRequired => Some((
                411,
                "send the body with a Content-Length header (chunked bodies are not accepted)\n"
                    .into(),
            )),
            RequestError::TooLarge => Some((413, "the body is too large\n".into())),
            RequestError::HeadTooLarge => Some((431, "the request headers are too large\n".into())),
            RequestError::Io(_) => None,
        }
    }
}

fn bad(why: impl Into<String>) -> RequestError {
    RequestError::Bad(why.into())
}

/// Read one request from `conn`. A body longer than `body_max_bytes` is refused before it is
/// read. When the client waits for `Expect: 100-continue`, the interim answer is sent.
pub fn read_request<C: Read + Write>(
    conn: &mut C,
    body_max_bytes: usize,
) -> Result<Request, RequestError> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= HEAD_MAX_BYTES {
            return Err(RequestError::HeadTooLarge);
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).map_err(RequestError::Io)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                RequestError::Io(io::ErrorKind::UnexpectedEof.into())
            } else {
                bad("the connection closed before the end of the headers")
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (head, rest) = buf.split_at(head_end.0);
    let rest = &rest[head_end.1..];
    let head = std::str::from_utf8(head).map_err(|_| bad("the headers are not UTF-8"))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let (method, path) = parse_request_line(lines.next().unwrap_or_default())?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if headers.len() == HEADERS_MAX {
            return Err(RequestError::HeadTooLarge);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed header line {line:?}")))?;
        if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
            return Err(bad(format!("malformed header name {name:?}")));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut req = Request {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(RequestError::LengthRequired);
    }
    let length = content_length(&req)?;
    let Some(length) = length else {
        if matches!(req.method.as_str(), "POST" | "PUT") {
            return Err(RequestError::LengthRequired);
        }
        return Ok(req);
    };
    if length > body_max_bytes {
        return Err(RequestError::TooLarge);
    }
    let mut body = rest[..rest.len().min(length)].to_vec();
    if body.len() < length {
        if req
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(RequestError::Io)?;
        }
        let start = body.len();
        body.resize(length, 0);
        conn.read_exact(&mut body[start..]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                bad("the connection closed before the end of the body (Content-Length)")
            } else {
                RequestError::Io(e)
            }
        })?;
    }
    req.body = body;
    Ok(req)
}

/// The end of the head: (offset of the blank line, length of the separator).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_request_line(line: &str) -> Result<(String, String), RequestError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("malformed request line {line:?}")));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(format!("malformed method {method:?}")));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("unsupported protocol {version:?}")));
    }
    if !target.starts_with('/') {
        return Err(bad(format!("the target {target:?} is not a path")));
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok((method.to_owned(), path.to_owned()))
}

fn content_length(req: &Request) -> Result<Option<usize>, RequestError> {
    let mut found: Option<usize> = None;
    for (_, v) in req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let n: usize = v
            .parse()
            .map_err(|_| bad(format!("Content-Length {v:?} is not a number")))?;
        if found.is_some_and(|f| f != n) {
            return Err(bad("two different Content-Length headers"));
        }
        found = Some(n);
    }
    Ok(found)
}

/// A response; always `Connection: close`.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    pub fn html(body: String) -> Self {
        Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes())?;
        w.write_all(&self.body)?;
        w.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        303 => "See Other",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// Decode `application/x-www-form-urlencoded` and return the value of `field`.
pub fn form_field(body: &str, field: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == field)
            .then(|| percent_decode(v))
            .flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Escape text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A connection that reads from `input` and records what is written.
    struct Conn {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Conn {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Conn {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn read(input: &[u8]) -> Result<Request, RequestError> {
        let mut c = Conn {
            input: Cursor::new(input.to_vec()),
            output: Vec::new(),
        };
        read_request(&mut c, 10)
    }

    fn status(input: &[u8]) -> u16 {
        match read(input) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e.status().map_or(0, |s| s.0),
        }
    }

    #[test]
    fn requests_parse() {
        let r = read(b"POST /notes?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .expect("valid");
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/notes"));
        assert_eq!(r.header("host"), Some("a"));
        assert_eq!(r.body, b"hello");
        let r = read(b"GET / HTTP/1.0\n\n").expect("bare newlines");
        assert_eq!(r.path, "/");
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert_eq!(status(b"HELLO\r\n\r\n"), 400);
        assert_eq!(status(b"get / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / SPDY/3\r\n\r\n"), 400);
        assert_eq!(status(b"GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\xff\xfe: x\r\n\r\n"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n"),
            413
        );
        assert_eq!(status(b"POST / HTTP/1.1\r\n\r\n"), 411);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            400
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost"), 400);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', HEAD_MAX_BYTES));
        assert_eq!(status(&long), 431);
    }

    #[test]
    fn forms_and_html() {
        assert_eq!(
            form_field("note=a+b%21&x=1", "note").as_deref(),
            Some("a b!")
        );
        assert_eq!(form_field("x=1", "note"), None);
        assert_eq!(form_field("note=%zz", "note"), None);
        assert_eq!(form_field("note=%e9", "note"), None);
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
