//! A minimal PostgreSQL client for the tests: protocol 3 over TCP, `trust` authentication only,
//! the simple query protocol, text results. Enough to commit numbered transactions and read
//! them back through a virtual IP, with explicit connect and I/O timeouts (a client of a node
//! that was cut off must give up, not wait for TCP's retransmissions) and with the exact
//! acknowledgement a test needs: a statement outside a transaction block is committed when the
//! server has answered CommandComplete and ReadyForQuery without an ErrorResponse
//! (PostgreSQL commits before it sends CommandComplete).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The answer to one simple query.
#[derive(Clone, Debug, Default)]
pub struct QueryResult {
    /// The command tags (`INSERT 0 1`, `SELECT 3`...), one per statement.
    pub tags: Vec<String>,
    /// Data rows of every statement, each column as text (`None` for NULL).
    pub rows: Vec<Vec<Option<String>>>,
}

/// An open session.
pub struct PgConn {
    stream: TcpStream,
}

/// An `ErrorResponse` as one line: severity, SQLSTATE and message.
fn error_text(body: &[u8]) -> String {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'S' => severity = value,
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    format!("{severity} {code}: {message}")
}

impl PgConn {
    /// Connect to `addr` as `user` to database `db`: `connect` bounds the TCP connection, `io`
    /// every later read and write.
    pub fn connect(
        addr: SocketAddr,
        user: &str,
        db: &str,
        connect: Duration,
        io: Duration,
    ) -> Result<PgConn, String> {
        let stream = TcpStream::connect_timeout(&addr, connect)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(io))
            .and_then(|()| stream.set_write_timeout(Some(io)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| format!("socket options: {e}"))?;
        let mut c = PgConn { stream };
        let mut body = Vec::new();
        body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
        for (k, v) in [
            ("user", user),
            ("database", db),
            ("application_name", "mirrorkit-test"),
        ] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        c.stream
            .write_all(&msg)
            .map_err(|e| format!("send startup: {e}"))?;
        loop {
            let (kind, body) = c.read_message()?;
            match kind {
                b'R' => {
                    let code = body
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(u32::MAX);
                    if code != 0 {
                        return Err(format!(
                            "the server asks for authentication method {code}: this client knows only trust"
                        ));
                    }
                }
                b'E' => return Err(error_text(&body)),
                b'Z' => return Ok(c),
                _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
            }
        }
    }

    fn read_message(&mut self) -> Result<(u8, Vec<u8>), String> {
        let mut head = [0u8; 5];
        self.stream
            .read_exact(&mut head)
            .map_err(|e| format!("read: {e}"))?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=64 << 20).contains(&len) {
            return Err(format!("message of {len} bytes from the server"));
        }
        let mut body = vec![0u8; len - 4];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("read: {e}"))?;
        Ok((head[0], body))
    }

    /// Run `sql` (one or more statements) with the simple query protocol; `Err` with the server's
    /// error, or the I/O failure (then the outcome of the statements is unknown).
    pub fn query(&mut self, sql: &str) -> Result<QueryResult, String> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.stream
            .write_all(&msg)
            .map_err(|e| format!("send: {e}"))?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            let (kind, body) = self.read_message()?;
            match kind {
                b'C' => {
                    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
                    result
                        .tags
                        .push(String::from_utf8_lossy(&body[..end]).into_owned());
                }
                b'D' => result.rows.push(parse_row(&body)?),
                b'E' => error = Some(error_text(&body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(result),
                    }
                }
                _ => {} // RowDescription, EmptyQueryResponse, NoticeResponse, ParameterStatus
            }
        }
    }
}

fn parse_row(body: &[u8]) -> Result<Vec<Option<String>>, String> {
    let bad = || "malformed DataRow".to_string();
    let n = u16::from_be_bytes([
        *body.first().ok_or_else(bad)?,
        *body.get(1).ok_or_else(bad)?,
    ]);
    let mut at = 2;
    let mut cols = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = body.get(at..at + 4).ok_or_else(bad)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len < 0 {
            cols.push(None);
            continue;
        }
        let v = body.get(at..at + len as usize).ok_or_else(bad)?;
        cols.push(Some(String::from_utf8_lossy(v).into_owned()));
        at += len as usize;
    }
    Ok(cols)
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Terminate: the server ends the session at once instead of logging a lost client.
        let _ = self.stream.write_all(&[b'X', 0, 0, 0, 4]);
    }
}
