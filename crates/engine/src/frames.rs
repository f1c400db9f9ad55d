//! Reading and writing length-prefixed frames (see `mirrorkit_wire`) on QUIC streams.

use mirrorkit_wire::{self as wire, Message, WireError};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("malformed message: {0}")]
    Wire(#[from] WireError),
}

/// Read one frame into `buf` (reused between calls). `Ok(false)` at a clean end of stream.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Result<bool, FrameError> {
    let mut prefix = [0u8; wire::LEN_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(false),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(cut_short()),
        Err(e) => return Err(e.into()),
    }
    let len = wire::frame_len(prefix)?;
    buf.resize(len, 0);
    match recv.read_exact(buf).await {
        Ok(()) => Ok(true),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(cut_short()),
        Err(e) => Err(e.into()),
    }
}

/// The peer finished its stream inside a frame: a malformed message, not a clean end.
fn cut_short() -> FrameError {
    FrameError::Wire(WireError::Truncated("the stream ended inside a frame"))
}

/// Encode and write one message without data.
pub async fn write_message(send: &mut quinn::SendStream, msg: &Message) -> Result<(), FrameError> {
    let mut out = Vec::new();
    wire::encode_frame(msg, &[], &mut out)?;
    send.write_all(&out).await?;
    Ok(())
}
