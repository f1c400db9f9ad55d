//! The witness protocol: what a node and the witness say to each other. Pure encoding and
//! decoding, no I/O; decoding returns an error on any input it does not accept and never
//! panics.
//!
//! # Transport
//!
//! Each node keeps one QUIC connection to the witness (TLS 1.3 with mutual certificate
//! authentication against the cluster CA, ALPN [`mirrorkit_net::ALPN`], the node's endpoint
//! dialling the witness's certificate name). The requesting node is the name in its verified
//! certificate; the witness refuses any name that is not one of its configured nodes.
//!
//! # One request per stream
//!
//! The node opens one bidirectional stream per request, writes one frame and finishes its side;
//! the witness answers with one frame and finishes its side. A frame is:
//!
//! | bytes | content |
//! | --- | --- |
//! | 4 | L, the body length, u32 big endian, 1 to [`MAX_BODY_BYTES`] (64 KiB) |
//! | 4 | `MKWT` ([`MAGIC`]) |
//! | 1 | protocol version, [`VERSION`] (1) |
//! | L − 5 | postcard encoding of [`RequestBody`] (node → witness) or [`Reply`] (witness → node) |
//!
//! Nothing may follow the frame on the stream. A body with another magic, another version,
//! bytes after the postcard value or a length out of bounds is refused: the witness answers
//! [`Reply::Error`] (in version 1) naming the problem, or resets the stream if it cannot even
//! read a frame; a node treats such an answer to a claim as a refusal. A future version changes
//! the version byte, so that the two sides fail with a clear message rather than misreading
//! each other.
//!
//! # Messages
//!
//! [`RequestBody`] carries the client's `incarnation` (random, per client process) and `seq`
//! (increasing over every request of that incarnation), then the request:
//!
//! - [`Request::Claim`] `{ module, op, current, history, force, lease_ms }`: the sending node
//!   asks for (or renews) the primary role of `module`, for its data `current` (a generation,
//!   or none) descending from `history` (newest first, at most [`MAX_HISTORY`]). `op` is the
//!   node's own tag, echoed in the answer. `lease_ms` is the lease asked for, [`MIN_LEASE_MS`]
//!   to [`MAX_LEASE_MS`]. `module` is 1 to [`MAX_MODULE_BYTES`] bytes of `a-z`, `0-9`, `-`,
//!   `_`, starting with a letter.
//! - [`Request::Release`] `{ module }`: the node gives the role up.
//!
//! Answers ([`Reply`]):
//!
//! - `Granted { op, lease_ms, held_ms }`: the node holds the role for `lease_ms`, counted by the
//!   witness from its decision, which came `held_ms` after it received the request (the witness
//!   may hold a claim while another node's lease runs, see below).
//! - `Refused { op, reason }`: another node holds the role, or the node's data is outdated, or
//!   the request is not acceptable (unknown node, bad module name, lease out of range...).
//! - `Released { module }`: the answer to a release (whether or not the node held the role).
//! - `Superseded { op }`: the witness already applied a later request of the same client
//!   incarnation for this module (streams are not ordered with respect to each other); this
//!   one changed nothing. The client ignores it.
//! - `Error { reason }`: the frame could not be read or decoded.
//!
//! # The witness's decision, per module
//!
//! The witness keeps, per module, the holder (a node name or none), the holder's lease expiry,
//! the holder's lease length and the recorded generation: the data of the last granted claim,
//! i.e. the latest data that may have acknowledged writes. On a claim of node N:
//!
//! 1. If another node holds a valid lease, the claim is held (not answered) until that lease
//!    expires (or is released), then decided again; if the holder has renewed meanwhile, the
//!    answer is `Refused("H holds module M")`. A forced claim follows the same rule.
//! 2. Else, if N is not the holder, the claim is not forced, and a recorded generation exists
//!    that is neither N's `current` nor in N's `history`: `Refused("outdated: ...")`.
//! 3. Else the witness persists (holder, recorded generation, lease) durably if they change,
//!    then grants: holder N, recorded = `current`, lease until now + `lease_ms`.
//!
//! A held claim whose stream the node stops (it gave up, or replaced the claim), or whose
//! connection ends, is dropped unanswered and changes nothing. A failure to persist is answered
//! `Refused` (claim) or `Error` (release) and changes nothing.
//!
//! A release by the holder clears the holder (persisted; claims held for its lease are decided
//! at once); a release by anyone else changes nothing. A request older (lower `seq`, same
//! `incarnation`) than a grant or release already applied for the same node and module is
//! answered `Superseded` and changes nothing.
//!
//! The witness persists, per module, `<state_dir>/<module>.state` (JSON: format, cluster,
//! module, holder, lease_ms, recorded generation in hexadecimal). A restarted witness treats a
//! persisted holder as holding a lease of its persisted length from the restart (the holder
//! itself may renew at once), and refuses to start on a state file it cannot read.
//!
//! # The node's side
//!
//! A granted node renews every `lease_ms / 4` and considers its grant lost at
//! `sent_at + held_ms + lease_ms − margin` of its latest granted request (`sent_at` taken before
//! sending, `margin = max(100 ms, lease_ms / 10)`), which is never after the witness's own
//! expiry: a node fences itself before the witness can grant the other node. A claim unanswered
//! for `lease_ms + 2 s` is reported unreachable. A renewal unanswered for `lease_ms / 3` makes
//! the node dial a new connection (the old one is presumed dead, e.g. the witness restarted).

use mirrorkit_cluster::generation::GenId;
use serde::{Deserialize, Serialize};

/// First bytes of every frame body.
pub const MAGIC: [u8; 4] = *b"MKWT";

/// Protocol version carried by every frame body.
pub const VERSION: u8 = 1;

/// Bytes of the length prefix of a frame.
pub const LEN_BYTES: usize = 4;

/// Bytes of the header at the start of every body: magic and version.
pub const HEADER_BYTES: usize = MAGIC.len() + 1;

/// Largest frame body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest frame, length prefix included.
pub const MAX_FRAME_BYTES: usize = LEN_BYTES + MAX_BODY_BYTES;

/// Longest module name.
pub const MAX_MODULE_BYTES: usize = 64;

/// Most generations in a claim's history.
pub const MAX_HISTORY: usize = 64;

/// Shortest lease a claim may ask for.
pub const MIN_LEASE_MS: u32 = 200;

/// Longest lease a claim may ask for.
pub const MAX_LEASE_MS: u32 = 60_000;

/// Longest reason text in a reply; longer ones are cut.
pub const MAX_REASON_BYTES: usize = 4096;

/// A node's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Claim {
        module: String,
        op: u64,
        current: Option<GenId>,
        history: Vec<GenId>,
        force: bool,
        lease_ms: u32,
    },
    Release {
        module: String,
    },
}

impl Request {
    /// The module the request is about.
    pub fn module(&self) -> &str {
        match self {
            Request::Claim { module, .. } | Request::Release { module } => module,
        }
    }
}

/// A request as sent: who (which client incarnation) sent it, in what order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBody {
    /// Random, chosen when the client starts.
    pub incarnation: u64,
    /// Increases with every request of the incarnation.
    pub seq: u64,
    pub request: Request,
}

/// The witness's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Granted {
        op: u64,
        lease_ms: u32,
        held_ms: u32,
    },
    Refused {
        op: u64,
        reason: String,
    },
    Released {
        module: String,
    },
    Superseded {
        op: u64,
    },
    Error {
        reason: String,
    },
}

/// Why bytes could not be read as a frame.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error(
        "frame of {len} bytes: expected a 4-byte length and a body of 1 to {MAX_BODY_BYTES} bytes"
    )]
    FrameLength { len: usize },
    #[error("the length prefix says {said} bytes but {found} bytes follow it")]
    LengthMismatch { said: usize, found: usize },
    #[error("the body starts with \"{found}\", not \"MKWT\": not a mirrorkit witness frame")]
    Magic { found: String },
    #[error("protocol version {found} is not supported: this side speaks version {VERSION}")]
    Version { found: u8 },
    #[error("undecodable body: {reason}")]
    Undecodable { reason: String },
    #[error("{what} is invalid: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// Cut `reason` to at most [`MAX_REASON_BYTES`] bytes, at a character boundary.
pub fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut cut = MAX_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}

/// Check a module name: 1 to [`MAX_MODULE_BYTES`] bytes of `a-z`, `0-9`, `-`, `_`, starting
/// with a letter (it names the witness's state file).
pub fn check_module_name(module: &str) -> Result<(), String> {
    const RULE: &str =
        "a module name is 1 to 64 characters of a-z, 0-9, '-' and '_', starting with a letter";
    if module.is_empty() || module.len() > MAX_MODULE_BYTES {
        return Err(format!("module name of {} bytes: {RULE}", module.len()));
    }
    let ok = module.starts_with(|c: char| c.is_ascii_lowercase())
        && module
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(format!("module name {module:?}: {RULE}"));
    }
    Ok(())
}

/// Check a lease length against [`MIN_LEASE_MS`]..=[`MAX_LEASE_MS`].
pub fn check_lease(lease_ms: u32) -> Result<(), String> {
    if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
        return Err(format!(
            "a lease of {lease_ms} ms is outside {MIN_LEASE_MS}..={MAX_LEASE_MS} ms"
        ));
    }
    Ok(())
}

impl RequestBody {
    /// Check the bounds a request must respect.
    pub fn check(&self) -> Result<(), ProtocolError> {
        let invalid = |what, reason| ProtocolError::Invalid { what, reason };
        check_module_name(self.request.module()).map_err(|r| invalid("module", r))?;
        if let Request::Claim { history, .. } = &self.request {
            if history.len() > MAX_HISTORY {
                return Err(invalid(
                    "history",
                    format!("{} generations, at most {MAX_HISTORY}", history.len()),
                ));
            }
        }
        Ok(())
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = vec![0u8; LEN_BYTES];
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    let frame = postcard::to_extend(value, frame).map_err(|e| ProtocolError::Undecodable {
        reason: e.to_string(),
    })?;
    let body_len = frame.len() - LEN_BYTES;
    if body_len > MAX_BODY_BYTES {
        return Err(ProtocolError::FrameLength { len: frame.len() });
    }
    let mut frame = frame;
    // body_len <= MAX_BODY_BYTES fits in u32.
    frame[..LEN_BYTES].copy_from_slice(&(body_len as u32).to_be_bytes());
    Ok(frame)
}

/// Decode a whole frame (length prefix and body) holding exactly one `T`.
fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, ProtocolError> {
    let Some((prefix, body)) = frame.split_first_chunk::<LEN_BYTES>() else {
        return Err(ProtocolError::FrameLength { len: frame.len() });
    };
    let said = u32::from_be_bytes(*prefix) as usize;
    if said == 0 || said > MAX_BODY_BYTES {
        return Err(ProtocolError::FrameLength {
            len: said.saturating_add(LEN_BYTES),
        });
    }
    if said != body.len() {
        return Err(ProtocolError::LengthMismatch {
            said,
            found: body.len(),
        });
    }
    let Some((magic, rest)) = body.split_first_chunk::<4>() else {
        return Err(ProtocolError::Magic {
            found: body.escape_ascii().to_string(),
        });
    };
    if *magic != MAGIC {
        return Err(ProtocolError::Magic {
            found: magic.escape_ascii().to_string(),
        });
    }
    let Some((&version, payload)) = rest.split_first() else {
        return Err(ProtocolError::Undecodable {
            reason: "no version byte".to_owned(),
        });
    };
    if version != VERSION {
        return Err(ProtocolError::Version { found: version });
    }
    let (value, left) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| ProtocolError::Undecodable {
            reason: e.to_string(),
        })?;
    if !left.is_empty() {
        return Err(ProtocolError::Undecodable {
            reason: format!("{} bytes after the message", left.len()),
        });
    }
    Ok(value)
}

/// The frame carrying `body`.
pub fn encode_request(body: &RequestBody) -> Result<Vec<u8>, ProtocolError> {
    body.check()?;
    encode(body)
}

/// Decode and check a request frame.
pub fn decode_request(frame: &[u8]) -> Result<RequestBody, ProtocolError> {
    let body: RequestBody = decode(frame)?;
    body.check()?;
    Ok(body)
}

/// The frame carrying `reply` (reasons cut to [`MAX_REASON_BYTES`]).
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, ProtocolError> {
    let reply = match reply.clone() {
        Reply::Refused { op, reason } => Reply::Refused {
            op,
            reason: bounded_reason(reason),
        },
        Reply::Error { reason } => Reply::Error {
            reason: bounded_reason(reason),
        },
        other => other,
    };
    encode(&reply)
}

/// Decode a reply frame.
pub fn decode_reply(frame: &[u8]) -> Result<Reply, ProtocolError> {
    decode(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn claim() -> RequestBody {
        RequestBody {
            incarnation: 7,
            seq: 3,
            request: Request::Claim {
                module: "shop".to_owned(),
                op: 42,
                current: Some(GenId(0xabc)),
                history: vec![GenId(1), GenId(2)],
                force: false,
                lease_ms: 2000,
            },
        }
    }

    #[test]
    fn round_trips() {
        let body = claim();
        let frame = encode_request(&body).unwrap();
        assert_eq!(&frame[4..8], b"MKWT");
        assert_eq!(frame[8], VERSION);
        assert_eq!(decode_request(&frame), Ok(body));
        for reply in [
            Reply::Granted {
                op: 1,
                lease_ms: 600,
                held_ms: 3,
            },
            Reply::Refused {
                op: 2,
                reason: "beta holds module shop".to_owned(),
            },
            Reply::Released {
                module: "shop".to_owned(),
            },
            Reply::Superseded { op: 9 },
            Reply::Error {
                reason: "x".to_owned(),
            },
        ] {
            assert_eq!(decode_reply(&encode_reply(&reply).unwrap()), Ok(reply));
        }
    }

    #[test]
    fn refuses_other_versions_magic_lengths_and_trailing_bytes() {
        let frame = encode_request(&claim()).unwrap();
        let mut v2 = frame.clone();
        v2[8] = 2;
        assert_eq!(
            decode_request(&v2),
            Err(ProtocolError::Version { found: 2 })
        );
        let mut magic = frame.clone();
        magic[4] = b'X';
        assert!(matches!(
            decode_request(&magic),
            Err(ProtocolError::Magic { .. })
        ));
        let mut long = frame.clone();
        long.push(0);
        assert!(matches!(
            decode_request(&long),
            Err(ProtocolError::LengthMismatch { .. })
        ));
        let mut trailing = frame.clone();
        trailing.push(0);
        let len = (trailing.len() - 4) as u32;
        trailing[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            decode_request(&trailing),
            Err(ProtocolError::Undecodable { .. })
        ));
        let huge = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert!(matches!(
            decode_request(&huge),
            Err(ProtocolError::FrameLength { .. })
        ));
        assert!(matches!(
            decode_request(&[0, 0, 0, 0]),
            Err(ProtocolError::FrameLength { .. })
        ));
        assert!(matches!(
            decode_request(&[0, 0]),
            Err(ProtocolError::FrameLength { .. })
        ));
    }

    #[test]
    fn refuses_bad_module_names_and_long_histories() {
        let mut body = claim();
        if let Request::Claim {
            module, history, ..
        } = &mut body.request
        {
            *module = "../etc".to_owned();
            *history = vec![];
        }
        assert!(encode_request(&body).is_err());
        let raw = encode(&body).unwrap();
        assert!(matches!(
            decode_request(&raw),
            Err(ProtocolError::Invalid { what: "module", .. })
        ));
        let mut body = claim();
        if let Request::Claim { history, .. } = &mut body.request {
            *history = vec![GenId(1); MAX_HISTORY + 1];
        }
        let raw = encode(&body).unwrap();
        assert!(matches!(
            decode_request(&raw),
            Err(ProtocolError::Invalid {
                what: "history",
                ..
            })
        ));
        for ok in ["a", "shop-db_2"] {
            assert!(check_module_name(ok).is_ok());
        }
        for bad in ["", "A", "1a", "a/b", "a.b", &"a".repeat(65)] {
            assert!(check_module_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid = encode_request(&claim()).unwrap();
        for i in 0..20_000 {
            let len = (rng.next() % 80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if i % 2 == 0 && len >= 9 {
                // A plausible header, so that the postcard decoder sees random payloads.
                let body = (len - 4) as u32;
                bytes[..4].copy_from_slice(&body.to_be_bytes());
                bytes[4..8].copy_from_slice(&MAGIC);
                bytes[8] = VERSION;
            }
            if i % 3 == 0 {
                // A valid frame with one byte changed.
                bytes = valid.clone();
                let at = (rng.next() as usize) % bytes.len();
                bytes[at] = rng.next() as u8;
            }
            let _ = decode_request(&bytes);
            let _ = decode_reply(&bytes);
        }
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let reason = "é".repeat(MAX_REASON_BYTES);
        let frame = encode_reply(&Reply::Error { reason }).unwrap();
        match decode_reply(&frame).unwrap() {
            Reply::Error { reason } => assert!(reason.len() <= MAX_REASON_BYTES),
            other => panic!("{other:?}"),
        }
    }
}
