//! Corpus replay for the wire decoder, on stable Rust and in CI: valid frames of every message
//! and operation, built from a seed, then mutated (bit flips, truncation, insertion, splicing,
//! forged lengths) and fed to `frame_len` and `decode_frame`. Nothing may panic, every valid
//! frame must decode to the message it was built from, and whatever the decoder accepts must
//! survive an encode/decode round trip. The coverage-guided fuzzer in `fuzz/` explores further.
//!
//! Reproduce a failure with `MIRRORKIT_CORPUS_SEED=<seed printed on failure>`. Set
//! `MIRRORKIT_FUZZ_CORPUS_DIR=fuzz/corpus/decode_frame` to also write the valid frames there as
//! seeds for `cargo fuzz run decode_frame`.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mirrorkit_wire::{
    decode_frame, encode_frame, frame_len, Hello, Message, Meta, Op, RelPath, Role, SpecialKind,
    Target, TimeFix, Timespec, LEN_PREFIX_BYTES, MAX_FIXES,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Valid messages built per run; each is also mutated `MUTATIONS_PER_FRAME` times.
const FRAMES: usize = 1500;
const MUTATIONS_PER_FRAME: usize = 4;
/// Valid frames written as fuzzing seeds when `MIRRORKIT_FUZZ_CORPUS_DIR` is set.
const SEEDS_WRITTEN: usize = 256;

fn name(rng: &mut StdRng) -> Vec<u8> {
    loop {
        let len = if rng.gen_bool(0.02) {
            255
        } else {
            rng.gen_range(1..12)
        };
        let n: Vec<u8> = (0..len)
            .map(|_| match rng.gen_range(0..4) {
                0 => rng.gen_range(1..=255u8),
                _ => rng.gen_range(b'a'..=b'z'),
            })
            .filter(|&b| b != b'/')
            .collect();
        if !n.is_empty() && n != b"." && n != b".." {
            return n;
        }
    }
}

fn path(rng: &mut StdRng) -> RelPath {
    let mut p = RelPath::root();
    for _ in 0..rng.gen_range(0..5) {
        if let Ok(q) = p.join(&name(rng)) {
            p = q;
        }
    }
    p
}

fn nonroot_path(rng: &mut StdRng) -> RelPath {
    loop {
        let p = path(rng);
        if !p.is_root() {
            return p;
        }
    }
}

fn timespec(rng: &mut StdRng) -> Timespec {
    Timespec {
        sec: rng.gen(),
        nsec: rng.gen_range(0..1_000_000_000),
    }
}

fn meta(rng: &mut StdRng) -> Meta {
    Meta {
        mode: rng.gen_range(0..0o10000),
        uid: rng.gen(),
        gid: rng.gen(),
        mtime: timespec(rng),
    }
}

fn target(rng: &mut StdRng) -> Target {
    if rng.gen() {
        Target::Path(path(rng))
    } else {
        Target::Handle(rng.gen())
    }
}

fn bytes(rng: &mut StdRng, len: std::ops::Range<usize>) -> Vec<u8> {
    (0..rng.gen_range(len)).map(|_| rng.gen()).collect()
}

fn xattr_name(rng: &mut StdRng) -> Vec<u8> {
    let mut n = b"user.".to_vec();
    n.extend(bytes(rng, 1..20).into_iter().map(|b| b.max(1)));
    n
}

/// One valid operation of kind `kind` (0..26, every `Op` variant) and the data it carries.
fn op(rng: &mut StdRng, kind: usize) -> (Op, Vec<u8>) {
    let data = |rng: &mut StdRng| bytes(rng, 1..256);
    match kind {
        0 => (
            Op::Create {
                path: nonroot_path(rng),
                meta: meta(rng),
                excl: rng.gen(),
                truncate: rng.gen(),
                handle: rng.gen::<bool>().then(|| rng.gen()),
            },
            vec![],
        ),
        1 => (
            Op::Open {
                path: nonroot_path(rng),
                handle: rng.gen(),
                truncate: rng.gen(),
            },
            vec![],
        ),
        2 => (Op::Close { handle: rng.gen() }, vec![]),
        3 => (
            Op::Write {
                handle: rng.gen(),
                offset: rng.gen(),
            },
            data(rng),
        ),
        4 => (
            Op::Truncate {
                target: target(rng),
                size: rng.gen(),
            },
            vec![],
        ),
        5 => (
            Op::Fallocate {
                handle: rng.gen(),
                mode: rng.gen(),
                offset: rng.gen(),
                len: rng.gen(),
            },
            vec![],
        ),
        6 => (
            Op::Fsync {
                handle: rng.gen(),
                datasync: rng.gen(),
            },
            vec![],
        ),
        7 => (Op::FsyncPath { path: path(rng) }, vec![]),
        8 => (
            Op::Mkdir {
                path: nonroot_path(rng),
                meta: meta(rng),
            },
            vec![],
        ),
        9 => {
            let kind = [
                SpecialKind::Fifo,
                SpecialKind::Socket,
                SpecialKind::Char,
                SpecialKind::Block,
            ][rng.gen_range(0..4)];
            (
                Op::Mknod {
                    path: nonroot_path(rng),
                    meta: meta(rng),
                    kind,
                    rdev: rng.gen(),
                },
                vec![],
            )
        }
        10 => (
            Op::Symlink {
                path: nonroot_path(rng),
                target: bytes(rng, 1..64),
                uid: rng.gen(),
                gid: rng.gen(),
                mtime: timespec(rng),
            },
            vec![],
        ),
        11 => (
            Op::Link {
                existing: nonroot_path(rng),
                new: nonroot_path(rng),
            },
            vec![],
        ),
        12 => (
            Op::Unlink {
                path: nonroot_path(rng),
            },
            vec![],
        ),
        13 => (
            Op::Rmdir {
                path: nonroot_path(rng),
            },
            vec![],
        ),
        14 => (
            Op::Rename {
                from: nonroot_path(rng),
                to: nonroot_path(rng),
                flags: rng.gen_range(0..=2),
            },
            vec![],
        ),
        15 => (
            Op::SetAttr {
                target: target(rng),
                mode: rng.gen::<bool>().then(|| rng.gen_range(0..0o10000)),
                uid: rng.gen::<bool>().then(|| rng.gen()),
                gid: rng.gen::<bool>().then(|| rng.gen()),
                atime: rng.gen::<bool>().then(|| timespec(rng)),
                mtime: rng.gen::<bool>().then(|| timespec(rng)),
            },
            vec![],
        ),
        16 => (
            Op::SetXattr {
                target: target(rng),
                name: xattr_name(rng),
                flags: rng.gen_range(0..3),
            },
            bytes(rng, 0..64),
        ),
        17 => (
            Op::RemoveXattr {
                target: target(rng),
                name: xattr_name(rng),
            },
            vec![],
        ),
        18 => (Op::Barrier, vec![]),
        19 => {
            let entries = (0..rng.gen_range(0..40)).map(|_| name(rng)).collect();
            (
                Op::SyncDir {
                    path: path(rng),
                    meta: meta(rng),
                    entries,
                    first: rng.gen(),
                    last: rng.gen(),
                },
                vec![],
            )
        }
        20 => (
            Op::SyncFile {
                path: nonroot_path(rng),
                meta: meta(rng),
                size: rng.gen(),
            },
            vec![],
        ),
        21 => (
            Op::SyncData {
                path: nonroot_path(rng),
                offset: rng.gen(),
            },
            data(rng),
        ),
        22 => (
            Op::SyncLink {
                existing: nonroot_path(rng),
                path: nonroot_path(rng),
            },
            vec![],
        ),
        23 => (
            Op::SyncRemove {
                path: nonroot_path(rng),
            },
            vec![],
        ),
        24 => (
            Op::SyncClearXattrs {
                target: target(rng),
            },
            vec![],
        ),
        25 => (
            Op::SyncBegin {
                mode: if rng.gen() {
                    mirrorkit_wire::SyncMode::Incremental
                } else {
                    mirrorkit_wire::SyncMode::Compare
                },
                preserve: rng.gen(),
            },
            vec![],
        ),
        26 => {
            let c = mirrorkit_wire::CHUNK_BYTES;
            let mut at = 0u64;
            let ranges = (0..rng.gen_range(0..5))
                .map(|_| {
                    let start = at + c * rng.gen_range(0..3);
                    let end = start + c * rng.gen_range(1..4);
                    at = end;
                    (start, end)
                })
                .collect();
            (
                Op::SyncProbe {
                    path: nonroot_path(rng),
                    meta: meta(rng),
                    size: rng.gen(),
                    ranges,
                },
                vec![],
            )
        }
        27 => (
            Op::SyncHole {
                path: nonroot_path(rng),
                offset: rng.gen_range(0..1 << 40),
                len: rng.gen_range(1..1 << 30),
            },
            vec![],
        ),
        28 => (
            Op::VerifyProbe {
                path: nonroot_path(rng),
                size: rng.gen(),
                ranges: vec![(0, mirrorkit_wire::CHUNK_BYTES * rng.gen_range(1..4))],
            },
            vec![],
        ),
        _ => (Op::SyncDone, vec![]),
    }
}

const OP_KINDS: usize = 30;

fn message(rng: &mut StdRng, i: usize) -> (Message, Vec<u8>) {
    let text = |rng: &mut StdRng| -> String {
        (0..rng.gen_range(0..40))
            .map(|_| rng.gen_range(' '..='~'))
            .collect()
    };
    // Mostly operations, each kind in turn; control messages in between.
    match i % 10 {
        0 => (
            Message::Hello(Hello {
                version: rng.gen(),
                node: text(rng),
                mirror: text(rng),
                role: if rng.gen() {
                    Role::Primary
                } else {
                    Role::Secondary
                },
                data: mirrorkit_wire::DataState {
                    current: rng.gen::<bool>().then(|| mirrorkit_wire::GenId(rng.gen())),
                    bitmap: rng.gen::<bool>().then(|| mirrorkit_wire::GenId(rng.gen())),
                    history: (0..rng.gen_range(0..4))
                        .map(|_| mirrorkit_wire::GenId(rng.gen()))
                        .collect(),
                    consistent: rng.gen(),
                    peer_in_sync: rng.gen(),
                    role: mirrorkit_wire::DataRole::Secondary,
                    unclean: rng.gen(),
                    forced: rng.gen(),
                    outdated: rng.gen(),
                },
                include: vec!["**".into()],
                exclude: Vec::new(),
            }),
            vec![],
        ),
        1 if rng.gen() => (
            Message::Probed {
                seq: rng.gen(),
                file: [
                    mirrorkit_wire::ProbeFile::Kept,
                    mirrorkit_wire::ProbeFile::Created,
                    mirrorkit_wire::ProbeFile::NoParent,
                    mirrorkit_wire::ProbeFile::Missing,
                    mirrorkit_wire::ProbeFile::OtherSize,
                ][rng.gen_range(0..5)],
            },
            vec![7u8; 32 * rng.gen_range(0..4)],
        ),
        1 => (Message::Ack { seq: rng.gen() }, vec![]),
        2 if rng.gen() => (
            Message::Failed {
                seq: rng.gen(),
                errno: rng.gen(),
                reason: text(rng),
            },
            vec![],
        ),
        2 => (Message::Bye { reason: text(rng) }, vec![]),
        _ => {
            let (op, data) = op(rng, i % OP_KINDS);
            let fixes = (0..rng.gen_range(0..=MAX_FIXES))
                .map(|_| TimeFix {
                    target: target(rng),
                    mtime: timespec(rng),
                })
                .collect();
            let seq = if rng.gen() {
                rng.gen_range(1..1000)
            } else {
                rng.gen()
            };
            (Message::Op { seq, op, fixes }, data)
        }
    }
}

/// Change `frame` (length prefix included) the way a broken or hostile peer might.
fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>, other: &[u8]) {
    match rng.gen_range(0..9) {
        0 => {
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..frame.len());
                frame[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        1 => {
            let i = rng.gen_range(0..frame.len());
            frame[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, rng.gen()][rng.gen_range(0..6)];
        }
        2 => frame.truncate(rng.gen_range(0..frame.len())),
        3 => {
            let i = rng.gen_range(0..=frame.len());
            let ins = bytes(rng, 1..16);
            frame.splice(i..i, ins);
        }
        4 => {
            let a = rng.gen_range(0..frame.len());
            let b = rng.gen_range(a..=frame.len());
            frame.drain(a..b);
        }
        5 => {
            // Splice the tail of another frame onto the head of this one.
            let a = rng.gen_range(0..frame.len());
            let b = rng.gen_range(0..other.len());
            frame.truncate(a);
            frame.extend_from_slice(&other[b..]);
        }
        6 => {
            // Forge the header length: off by a little, or anything.
            let hl_at = LEN_PREFIX_BYTES..LEN_PREFIX_BYTES + 2;
            let hl = u16::from_le_bytes(frame[hl_at.clone()].try_into().unwrap());
            let forged = match rng.gen_range(0..3) {
                0 => hl.wrapping_add(1),
                1 => hl.wrapping_sub(1),
                _ => rng.gen(),
            };
            frame[hl_at].copy_from_slice(&forged.to_le_bytes());
        }
        7 => {
            // Data behind a message that carries none, or more of it.
            let extra = bytes(rng, 1..32);
            frame.extend_from_slice(&extra);
        }
        _ => {
            // Forge the length prefix.
            let forged: u32 = if rng.gen() {
                rng.gen()
            } else {
                (frame.len() - LEN_PREFIX_BYTES) as u32 ^ (1 << rng.gen_range(0..32))
            };
            frame[..LEN_PREFIX_BYTES].copy_from_slice(&forged.to_le_bytes());
        }
    }
}

/// Feed `input` to the decoder as a stream reader would; returns whether a message came out.
/// Anything accepted must round-trip.
fn feed(input: &[u8]) -> Option<(Message, Vec<u8>)> {
    let prefix: [u8; LEN_PREFIX_BYTES] = input.get(..LEN_PREFIX_BYTES)?.try_into().unwrap();
    // The reader trusts neither the prefix nor the body: decode the body whatever the prefix says,
    // as a peer that lies about the length would make it do.
    let _ = frame_len(prefix);
    let (msg, data) = decode_frame(&input[LEN_PREFIX_BYTES..]).ok()?;
    let mut again = Vec::new();
    encode_frame(&msg, data, &mut again)
        .unwrap_or_else(|e| panic!("decoded {msg:?} but cannot encode it again: {e}"));
    let (back, back_data) = decode_frame(&again[LEN_PREFIX_BYTES..])
        .unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
    assert_eq!(back, msg, "round trip changed the message");
    assert_eq!(back_data, data, "round trip changed the data");
    Some((msg, data.to_vec()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn seeded_valid_and_mutated_frames_never_panic_the_decoder() {
    let seed: u64 = match std::env::var("MIRRORKIT_CORPUS_SEED") {
        Ok(s) => s.parse().expect("MIRRORKIT_CORPUS_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    eprintln!("corpus seed {seed} (rerun with MIRRORKIT_CORPUS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds_dir = std::env::var_os("MIRRORKIT_FUZZ_CORPUS_DIR").map(std::path::PathBuf::from);
    if let Some(d) = &seeds_dir {
        std::fs::create_dir_all(d).expect("create the fuzz corpus directory");
    }

    let mut previous = Vec::new();
    let (mut mutated, mut accepted) = (0usize, 0usize);
    let mut frame = Vec::new();
    for i in 0..FRAMES {
        let (msg, data) = message(&mut rng, i);
        encode_frame(&msg, &data, &mut frame)
            .unwrap_or_else(|e| panic!("seed {seed}: cannot encode valid {msg:?}: {e}"));
        assert_eq!(
            frame_len(frame[..LEN_PREFIX_BYTES].try_into().unwrap()),
            Ok(frame.len() - LEN_PREFIX_BYTES),
            "seed {seed}: length prefix of {msg:?}"
        );
        let decoded = feed(&frame);
        assert_eq!(
            decoded,
            Some((msg.clone(), data.clone())),
            "seed {seed}: valid frame {} did not decode to its message",
            hex(&frame)
        );
        if let Some(d) = seeds_dir.as_ref().filter(|_| i < SEEDS_WRITTEN) {
            std::fs::write(d.join(format!("valid-{i:04}")), &frame).expect("write a fuzz seed");
        }

        for _ in 0..MUTATIONS_PER_FRAME {
            let mut input = frame.clone();
            let other = if previous.is_empty() {
                &frame
            } else {
                &previous
            };
            mutate(&mut rng, &mut input, other);
            mutated += 1;
            match catch_unwind(AssertUnwindSafe(|| feed(&input))) {
                Ok(Some(_)) => accepted += 1,
                Ok(None) => {}
                Err(panic) => {
                    eprintln!(
                        "seed {seed}: the decoder panicked on a mutation of {msg:?}; input {}",
                        hex(&input)
                    );
                    resume_unwind(panic);
                }
            }
        }
        previous = frame.clone();
    }
    eprintln!(
        "{FRAMES} valid frames decoded; {mutated} mutated frames, {accepted} accepted (and round-tripped), {} rejected",
        mutated - accepted
    );
    // Both outcomes must occur, or the mutations are not testing what they should.
    assert!(accepted > 0 && accepted < mutated, "seed {seed}");
}
