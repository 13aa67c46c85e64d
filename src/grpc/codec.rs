//! gRPC message framing (the "Length-Prefixed-Message" of the gRPC HTTP/2 spec):
//!
//! ```text
//!  byte 0      bytes 1..5               bytes 5..5+length
//! +----------+-------------------------+---------------------+
//! | flag u8  | length u32 big-endian   | message (protobuf)  |
//! +----------+-------------------------+---------------------+
//!  flag: 0 = uncompressed, 1 = compressed with the negotiated grpc-encoding
//! ```
//!
//! Messages arrive split over, or packed into, HTTP/2 DATA frames in any way; `Decoder`
//! reassembles them and enforces the receive limit before buffering a message.

use super::status::{Code, Status};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the prefix in front of every message.
pub const HEADER_BYTES: usize = 5;

/// Frames one message.
pub fn encode(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_BYTES + message.len());
    encode_into(&mut out, message);
    out.freeze()
}

/// The prefix of a `len`-byte message (sent before the message itself).
pub fn prefix(len: usize) -> Bytes {
    let length = u32::try_from(len).expect("gRPC message over 4 GiB");
    let mut out = BytesMut::with_capacity(HEADER_BYTES);
    out.put_u8(0);
    out.put_u32(length);
    out.freeze()
}

/// Appends one framed message to `out`.
pub fn encode_into(out: &mut BytesMut, message: &[u8]) {
    let length = u32::try_from(message.len()).expect("gRPC message over 4 GiB");
    out.reserve(HEADER_BYTES + message.len());
    out.put_u8(0);
    out.put_u32(length);
    out.put_slice(message);
}

/// Reassembles messages from DATA chunks. Holds at most one partial message plus the
/// last chunk, and never a message larger than `message_bytes_max`.
pub struct Decoder {
    buffer: BytesMut,
    /// A chunk kept as it came (see [`Decoder::push_shared`]), before `buffer`'s bytes.
    kept: Option<Bytes>,
    message_bytes_max: usize,
}

impl Decoder {
    pub fn new(message_bytes_max: usize) -> Decoder {
        Decoder {
            buffer: BytesMut::new(),
            kept: None,
            message_bytes_max,
        }
    }

    /// Appends one DATA chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        if let Some(kept) = self.kept.take() {
            self.buffer.extend_from_slice(&kept);
        }
        self.buffer.extend_from_slice(chunk);
    }

    /// Appends one DATA chunk, keeping it as it is when nothing is buffered: a message
    /// wholly inside it is then a slice of it, not a copy (issue 22: a unary request's one
    /// DATA frame). The slice holds the chunk's buffer (h2's read buffer) for as long as
    /// it lives, so only calls that hold their message briefly (unary ones) use this.
    pub fn push_shared(&mut self, chunk: Bytes) {
        if self.kept.is_none() && self.buffer.is_empty() {
            self.kept = Some(chunk);
        } else {
            self.push(&chunk);
        }
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or the status
    /// that ends the call (the stream is then unusable).
    pub fn decode(&mut self) -> Result<Option<Bytes>, Status> {
        if let Some(kept) = &mut self.kept {
            if let Some(length) = header(kept, self.message_bytes_max)? {
                if kept.len() >= HEADER_BYTES + length {
                    kept.advance(HEADER_BYTES);
                    let message = kept.split_to(length);
                    if kept.is_empty() {
                        self.kept = None;
                    }
                    return Ok(Some(message));
                }
            }
            // A partial message: buffered from here on.
            let kept = self.kept.take().expect("just seen");
            self.buffer.extend_from_slice(&kept);
        }
        let Some(length) = header(&self.buffer, self.message_bytes_max)? else {
            return Ok(None);
        };
        if self.buffer.len() < HEADER_BYTES + length {
            self.buffer
                .reserve(HEADER_BYTES + length - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(HEADER_BYTES);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }

    /// Called at end of stream: leftover bytes mean a truncated message.
    pub fn finish(&self) -> Result<(), Status> {
        let left = self.buffer.len() + self.kept.as_ref().map_or(0, Bytes::len);
        if left == 0 {
            Ok(())
        } else {
            Err(Status::new(
                Code::Internal,
                format!("grpc: request stream ended inside a message ({left} bytes left over)"),
            ))
        }
    }
}

/// The length of the message whose prefix starts `bytes`, `None` if the prefix is not
/// all there, or the status for a prefix the call cannot take.
fn header(bytes: &[u8], message_bytes_max: usize) -> Result<Option<usize>, Status> {
    if bytes.len() < HEADER_BYTES {
        return Ok(None);
    }
    let flag = bytes[0];
    let length = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    match flag {
        0 => {}
        // grpc-go: no grpc-encoding was negotiated, so a compressed message is an error.
        1 => {
            return Err(Status::new(
                Code::Internal,
                "grpc: compressed flag set with identity or empty encoding",
            ))
        }
        other => {
            return Err(Status::new(
                Code::Internal,
                format!("grpc: received unexpected payload format {other}"),
            ))
        }
    }
    if length > message_bytes_max {
        return Err(Status::new(
            Code::ResourceExhausted,
            format!(
                "grpc: received message larger than max ({} vs. {})",
                length, message_bytes_max
            ),
        ));
    }
    Ok(Some(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_packed() {
        let messages: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; i * 7]).collect();
        let wire: Vec<u8> = messages.iter().flat_map(|m| encode(m).to_vec()).collect();
        let wire = Bytes::from(wire);
        // Copied chunks, kept chunks, and the two mixed (every third chunk copied).
        for how in 0..3 {
            for chunk_bytes in [1, 2, 5, 13, 40, 71, wire.len()] {
                let mut decoder = Decoder::new(1024);
                let mut got = Vec::new();
                let mut kept = 0;
                for (i, start) in (0..wire.len()).step_by(chunk_bytes).enumerate() {
                    let chunk = wire.slice(start..(start + chunk_bytes).min(wire.len()));
                    match how {
                        0 => decoder.push(&chunk),
                        1 => decoder.push_shared(chunk),
                        _ if i % 3 == 0 => decoder.push(&chunk),
                        _ => decoder.push_shared(chunk),
                    }
                    while let Some(m) = decoder.decode().unwrap() {
                        // A message wholly inside a kept chunk is a slice of the wire.
                        let in_wire = wire.as_ptr_range().contains(&m.as_ptr());
                        kept += usize::from(in_wire && !m.is_empty());
                        assert!(how != 0 || !in_wire || m.is_empty());
                        got.push(m.to_vec());
                    }
                }
                decoder.finish().unwrap();
                assert_eq!(got, messages, "how {how}, chunks of {chunk_bytes}");
                if how == 1 && chunk_bytes == wire.len() {
                    assert_eq!(kept, messages.len() - 1, "all but the empty one kept");
                }
            }
        }
        // A kept chunk ending inside a message is not taken for a whole stream.
        let mut decoder = Decoder::new(1024);
        decoder.push_shared(wire.slice(..wire.len() - 1));
        while decoder.decode().unwrap().is_some() {}
        assert_eq!(decoder.finish().unwrap_err().code, Code::Internal);
    }

    #[test]
    fn limits_and_flags() {
        let mut decoder = Decoder::new(10);
        decoder.push(&encode(&[0; 11])[..6]);
        let err = decoder.decode().unwrap_err();
        assert_eq!(err.code, Code::ResourceExhausted);
        assert_eq!(
            err.message,
            "grpc: received message larger than max (11 vs. 10)"
        );

        let mut decoder = Decoder::new(10);
        decoder.push(&[1, 0, 0, 0, 1, 7]);
        assert_eq!(decoder.decode().unwrap_err().code, Code::Internal);

        let mut decoder = Decoder::new(10);
        decoder.push(&[0, 0, 0, 0, 4, 7]);
        assert_eq!(decoder.decode().unwrap(), None);
        assert_eq!(decoder.finish().unwrap_err().code, Code::Internal);
    }
}
