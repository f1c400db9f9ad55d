//! Fuzz the wire decoder: no input may make it panic, and whatever it accepts must survive an
//! encode/decode round trip unchanged (see `mirrorkit_wire`, "Never does").

#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorkit_wire::{decode_frame, encode_frame, frame_len, LEN_PREFIX_BYTES};

fuzz_target!(|data: &[u8]| {
    // The input read as it arrives on a stream: a length prefix, then the frame.
    if let Some((prefix, rest)) = data.split_first_chunk::<LEN_PREFIX_BYTES>() {
        if let Ok(len) = frame_len(*prefix) {
            if let Some(frame) = rest.get(..len) {
                check(frame);
            }
        }
    }
    // The input read as a frame body on its own.
    check(data);
});

fn check(frame: &[u8]) {
    let Ok((msg, payload)) = decode_frame(frame) else {
        return;
    };
    let mut out = Vec::new();
    encode_frame(&msg, payload, &mut out).expect("a decoded message must encode");
    let prefix: [u8; LEN_PREFIX_BYTES] = out[..LEN_PREFIX_BYTES].try_into().unwrap();
    let len = frame_len(prefix).expect("an encoded frame's length must be accepted");
    assert_eq!(len, out.len() - LEN_PREFIX_BYTES, "length prefix");
    let (back, back_payload) =
        decode_frame(&out[LEN_PREFIX_BYTES..]).expect("an encoded frame must decode");
    assert_eq!(back, msg);
    assert_eq!(back_payload, payload);
}
