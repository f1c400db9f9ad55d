//! The bytes on the wire: heartbeat datagrams and message frames. Pure encoding and decoding,
//! no I/O; decoding returns an error on any input it does not accept and never panics.

use serde::{Deserialize, Serialize};

/// First byte of a heartbeat datagram: its format version.
pub const HEARTBEAT_V1: u8 = 1;

/// Size of a heartbeat datagram: version, boot id, counter.
pub const HEARTBEAT_BYTES: usize = 1 + 8 + 8;

/// First bytes of each message stream: a peer speaking another format fails here, clearly,
/// instead of misreading frames.
pub const STREAM_MAGIC: [u8; 4] = *b"MKC1";

/// Largest message payload. Messages are statuses and requests of a few hundred bytes; the
/// bound keeps a confused or hostile peer from making us buffer without limit.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Longest channel name (the daemon uses module names, at most 32 bytes).
pub const MAX_CHANNEL_BYTES: usize = 255;

/// Largest frame body: a payload, a channel name and their postcard length prefixes.
pub const MAX_FRAME_BYTES: usize = MAX_PAYLOAD_BYTES + MAX_CHANNEL_BYTES + 16;

/// Bytes of the length prefix of a frame.
pub const FRAME_LEN_BYTES: usize = 4;

/// One heartbeat: who sent it (the sender process's boot id) and its rank on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub boot_id: u64,
    pub counter: u64,
}

impl Beat {
    pub fn encode(&self) -> [u8; HEARTBEAT_BYTES] {
        let mut out = [0u8; HEARTBEAT_BYTES];
        out[0] = HEARTBEAT_V1;
        out[1..9].copy_from_slice(&self.boot_id.to_be_bytes());
        out[9..17].copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let bytes: &[u8; HEARTBEAT_BYTES] =
            bytes.try_into().map_err(|_| WireError::HeartbeatLength {
                len_bytes: bytes.len(),
            })?;
        if bytes[0] != HEARTBEAT_V1 {
            return Err(WireError::HeartbeatVersion { version: bytes[0] });
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Self {
            boot_id: word(1),
            counter: word(9),
        })
    }
}

/// A message between the two daemons: which state machine it is for, and its opaque content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The daemon's routing key (a module name).
    pub channel: String,
    pub payload: Vec<u8>,
}

/// Why bytes from the peer were rejected, or a message could not be sent.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum WireError {
    #[error("heartbeat datagram of {len_bytes} bytes, expected {HEARTBEAT_BYTES}")]
    HeartbeatLength { len_bytes: usize },
    #[error("heartbeat datagram of unknown version {version}, expected {HEARTBEAT_V1}")]
    HeartbeatVersion { version: u8 },
    #[error("message stream starts with {found:?}, expected {STREAM_MAGIC:?}")]
    StreamMagic { found: [u8; 4] },
    #[error("frame of {len_bytes} bytes, expected 1 to {MAX_FRAME_BYTES}")]
    FrameLength { len_bytes: usize },
    #[error("channel name of {len_bytes} bytes, at most {MAX_CHANNEL_BYTES} allowed")]
    ChannelTooLong { len_bytes: usize },
    #[error("payload of {len_bytes} bytes, at most {MAX_PAYLOAD_BYTES} allowed")]
    PayloadTooLarge { len_bytes: usize },
    #[error("undecodable frame: {reason}")]
    Undecodable { reason: String },
}

impl Message {
    /// The frame carrying this message: its length prefix, then its postcard encoding.
    pub fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        self.check_bounds()?;
        let body = postcard::to_allocvec(self).map_err(|e| WireError::Undecodable {
            reason: e.to_string(),
        })?;
        debug_assert!(!body.is_empty() && body.len() <= MAX_FRAME_BYTES);
        let len = u32::try_from(body.len()).map_err(|_| WireError::FrameLength {
            len_bytes: body.len(),
        })?;
        let mut frame = Vec::with_capacity(FRAME_LEN_BYTES + body.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&body);
        Ok(frame)
    }

    /// Decode a frame body (the bytes after the length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        check_frame_len(body.len())?;
        let (message, rest) =
            postcard::take_from_bytes::<Message>(body).map_err(|e| WireError::Undecodable {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(WireError::Undecodable {
                reason: format!("{} bytes after the message", rest.len()),
            });
        }
        message.check_bounds()?;
        Ok(message)
    }

    fn check_bounds(&self) -> Result<(), WireError> {
        if self.channel.len() > MAX_CHANNEL_BYTES {
            return Err(WireError::ChannelTooLong {
                len_bytes: self.channel.len(),
            });
        }
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(WireError::PayloadTooLarge {
                len_bytes: self.payload.len(),
            });
        }
        Ok(())
    }
}

/// Decode a frame's length prefix and check it against [`MAX_FRAME_BYTES`].
pub fn decode_frame_len(prefix: [u8; FRAME_LEN_BYTES]) -> Result<usize, WireError> {
    let len_bytes = u32::from_be_bytes(prefix) as usize;
    check_frame_len(len_bytes)?;
    Ok(len_bytes)
}

fn check_frame_len(len_bytes: usize) -> Result<(), WireError> {
    if len_bytes == 0 || len_bytes > MAX_FRAME_BYTES {
        return Err(WireError::FrameLength { len_bytes });
    }
    Ok(())
}

/// Check the first bytes of a message stream.
pub fn check_stream_magic(found: [u8; 4]) -> Result<(), WireError> {
    if found != STREAM_MAGIC {
        return Err(WireError::StreamMagic { found });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: the tests need varied bytes, not good randomness.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn body(frame: &[u8]) -> &[u8] {
        let len = decode_frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - FRAME_LEN_BYTES);
        &frame[FRAME_LEN_BYTES..]
    }

    #[test]
    fn heartbeat_round_trips_and_rejects_other_sizes_and_versions() {
        let beat = Beat {
            boot_id: 0x0123_4567_89ab_cdef,
            counter: 42,
        };
        let bytes = beat.encode();
        assert_eq!(Beat::decode(&bytes), Ok(beat));
        assert_eq!(
            Beat::decode(&bytes[..16]),
            Err(WireError::HeartbeatLength { len_bytes: 16 })
        );
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Beat::decode(&longer).is_err());
        let mut other = bytes;
        other[0] = 2;
        assert_eq!(
            Beat::decode(&other),
            Err(WireError::HeartbeatVersion { version: 2 })
        );
    }

    #[test]
    fn message_round_trips_at_the_bounds() {
        for message in [
            Message {
                channel: String::new(),
                payload: Vec::new(),
            },
            Message {
                channel: "m".repeat(MAX_CHANNEL_BYTES),
                payload: vec![0xa5; MAX_PAYLOAD_BYTES],
            },
        ] {
            let frame = message.encode_frame().unwrap();
            assert!(frame.len() - FRAME_LEN_BYTES <= MAX_FRAME_BYTES);
            assert_eq!(Message::decode_body(body(&frame)), Ok(message));
        }
    }

    #[test]
    fn oversized_messages_are_refused_before_sending() {
        let long_channel = Message {
            channel: "m".repeat(MAX_CHANNEL_BYTES + 1),
            payload: Vec::new(),
        };
        assert!(matches!(
            long_channel.encode_frame(),
            Err(WireError::ChannelTooLong { .. })
        ));
        let big = Message {
            channel: "m".into(),
            payload: vec![0; MAX_PAYLOAD_BYTES + 1],
        };
        assert!(matches!(
            big.encode_frame(),
            Err(WireError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn frame_lengths_outside_the_bound_are_refused() {
        assert!(decode_frame_len([0; 4]).is_err());
        assert!(decode_frame_len([0xff; 4]).is_err());
        let max = u32::try_from(MAX_FRAME_BYTES).unwrap();
        assert_eq!(decode_frame_len(max.to_be_bytes()), Ok(MAX_FRAME_BYTES));
        assert!(decode_frame_len((max + 1).to_be_bytes()).is_err());
    }

    #[test]
    fn a_body_decoding_to_an_oversized_message_is_refused() {
        // A peer that does not check its own bounds: a 300-byte channel name.
        let body = postcard::to_allocvec(&Message {
            channel: "c".repeat(300),
            payload: vec![1],
        })
        .unwrap();
        assert_eq!(
            Message::decode_body(&body),
            Err(WireError::ChannelTooLong { len_bytes: 300 })
        );
    }

    #[test]
    fn trailing_bytes_and_truncations_are_refused() {
        let frame = Message {
            channel: "alpha".into(),
            payload: b"status".to_vec(),
        }
        .encode_frame()
        .unwrap();
        let body = body(&frame);
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(Message::decode_body(&longer).is_err());
        for len in 1..body.len() {
            assert!(Message::decode_body(&body[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid = Message {
            channel: "module".into(),
            payload: (0..64).collect(),
        }
        .encode_frame()
        .unwrap();
        for round in 0..20_000 {
            let len = (rng.next() % 96) as usize;
            let input = if round % 2 == 0 {
                rng.bytes(len)
            } else {
                // Mutations of a valid body: flipped bytes, so that decoding gets deeper.
                let mut b = valid[FRAME_LEN_BYTES..].to_vec();
                for _ in 0..1 + rng.next() % 3 {
                    let at = (rng.next() as usize) % b.len();
                    b[at] = rng.next() as u8;
                }
                b
            };
            let _ = Message::decode_body(&input);
            let _ = Beat::decode(&input);
            if input.len() >= 4 {
                let _ = decode_frame_len(input[..4].try_into().unwrap());
                let _ = check_stream_magic(input[..4].try_into().unwrap());
            }
        }
    }
}
