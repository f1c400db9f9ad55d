use super::*;
use rand::{Rng, SeedableRng};

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn frame_body(buf: &[u8]) -> &[u8] {
    &buf[LEN_PREFIX_BYTES..]
}

#[test]
fn round_trip_with_data() {
    let msg = Message::Op {
        seq: 7,
        op: Op::Write {
            handle: 3,
            offset: 4096,
        },
        fixes: vec![TimeFix {
            target: Target::Handle(3),
            mtime: Timespec { sec: 1, nsec: 2 },
        }],
    };
    let mut buf = Vec::new();
    encode_frame(&msg, b"hello", &mut buf).unwrap();
    let len = frame_len(buf[..4].try_into().unwrap()).unwrap();
    assert_eq!(len, buf.len() - 4);
    let (back, data) = decode_frame(frame_body(&buf)).unwrap();
    assert_eq!(back, msg);
    assert_eq!(data, b"hello");
}

#[test]
fn header_only_encoding_matches_full_frame() {
    let msg = Message::Op {
        seq: 1,
        op: Op::SyncData {
            path: p("a/b"),
            offset: 0,
        },
        fixes: vec![],
    };
    let data = vec![9u8; 1000];
    let mut full = Vec::new();
    encode_frame(&msg, &data, &mut full).unwrap();
    let mut head = Vec::new();
    encode_header(&msg, data.len(), &mut head).unwrap();
    head.extend_from_slice(&data);
    assert_eq!(head, full);
}

#[test]
fn paths_that_could_escape_are_rejected() {
    for bad in ["..", "a/../b", "/etc", "a//b", "a/", ".", "a/./b", "a\0b"] {
        assert!(RelPath::new(bad.as_bytes().to_vec()).is_err(), "{bad:?}");
    }
    assert!(RelPath::new(vec![b'x'; 256]).is_err());
    assert!(RelPath::new(b"a/b c/d".to_vec()).is_ok());
    assert!(RelPath::root().join(b"..").is_err());
}

#[test]
fn escaping_path_in_a_forged_header_is_rejected() {
    // Forge an Unlink with path "../x" by encoding a message with a valid path of the same
    // length and patching the bytes: the decoder must refuse it.
    let msg = Message::Op {
        seq: 1,
        op: Op::Unlink { path: p("zz/x") },
        fixes: vec![],
    };
    let mut buf = Vec::new();
    encode_frame(&msg, &[], &mut buf).unwrap();
    let pos = buf.windows(4).position(|w| w == b"zz/x").unwrap();
    buf[pos..pos + 4].copy_from_slice(b"../x");
    let err = decode_frame(frame_body(&buf)).unwrap_err();
    // The error names the path and why it is refused.
    assert!(
        matches!(&err, WireError::BadPath(r) if r.contains("\"../x\"") && r.contains("\"..\"")),
        "{err}"
    );
}

#[test]
fn data_rules() {
    let write = Message::Op {
        seq: 1,
        op: Op::Write {
            handle: 1,
            offset: 0,
        },
        fixes: vec![],
    };
    let mut buf = Vec::new();
    assert!(matches!(
        encode_frame(&write, &[], &mut buf),
        Err(WireError::DataMismatch { .. })
    ));
    let unlink = Message::Op {
        seq: 1,
        op: Op::Unlink { path: p("a") },
        fixes: vec![],
    };
    assert!(encode_frame(&unlink, b"x", &mut buf).is_err());
    let ack = Message::Ack { seq: 1 };
    encode_frame(&ack, &[], &mut buf).unwrap();
    // Append data behind a control message: rejected.
    let mut forged = frame_body(&buf).to_vec();
    forged.push(1);
    assert!(matches!(
        decode_frame(&forged),
        Err(WireError::DataMismatch { .. })
    ));
}

#[test]
fn truncated_frames_are_rejected() {
    let msg = Message::Op {
        seq: 1,
        op: Op::Rename {
            from: p("a"),
            to: p("b"),
            flags: 0,
        },
        fixes: vec![],
    };
    let mut buf = Vec::new();
    encode_frame(&msg, &[], &mut buf).unwrap();
    let body = frame_body(&buf);
    for cut in 0..body.len() {
        assert!(decode_frame(&body[..cut]).is_err(), "cut at {cut}");
    }
    assert!(frame_len(u32::MAX.to_le_bytes()).is_err());
    assert!(frame_len(1u32.to_le_bytes()).is_err());
}

#[test]
fn garbage_never_panics() {
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..20_000 {
        let len = rng.gen_range(0..200);
        let mut v: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if v.len() >= 2 && rng.gen_bool(0.5) {
            let hl = (v.len() - 2) as u16;
            v[..2].copy_from_slice(&hl.to_le_bytes());
        }
        let _ = decode_frame(&v);
    }
}
