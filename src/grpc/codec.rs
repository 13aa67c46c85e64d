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
    message_bytes_max: usize,
}

impl Decoder {
    pub fn new(message_bytes_max: usize) -> Decoder {
        Decoder {
            buffer: BytesMut::new(),
            message_bytes_max,
        }
    }

    /// Appends one DATA chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or the status
    /// that ends the call (the stream is then unusable).
    pub fn decode(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffer.len() < HEADER_BYTES {
            return Ok(None);
        }
        let flag = self.buffer[0];
        let length = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
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
        if length > self.message_bytes_max {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "grpc: received message larger than max ({} vs. {})",
                    length, self.message_bytes_max
                ),
            ));
        }
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
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(Status::new(
                Code::Internal,
                format!(
                    "grpc: request stream ended inside a message ({} bytes left over)",
                    self.buffer.len()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_packed() {
        let messages: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; i * 7]).collect();
        let wire: Vec<u8> = messages.iter().flat_map(|m| encode(m).to_vec()).collect();
        for chunk_bytes in [1, 2, 5, 13, wire.len()] {
            let mut decoder = Decoder::new(1024);
            let mut got = Vec::new();
            for chunk in wire.chunks(chunk_bytes) {
                decoder.push(chunk);
                while let Some(m) = decoder.decode().unwrap() {
                    got.push(m.to_vec());
                }
            }
            decoder.finish().unwrap();
            assert_eq!(got, messages);
        }
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
