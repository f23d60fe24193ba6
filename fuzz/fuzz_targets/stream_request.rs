//! What a gRPC client sends on a stream, from the bytes on the wire: length-prefixed gRPC
//! messages (a flag byte, a 4-byte big-endian length) decoded as `StreamRequest`s, and each
//! data frame converted to a session input as the server does. Any bytes give inputs or
//! errors, never a panic or an unbounded allocation; an accepted input sent back to a client
//! and read in again is the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use remotemedia_proto::{StreamRequest, data_in, data_out, micros, stream_request};

fuzz_target!(|bytes: &[u8]| {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let body = &rest[5..][..len.min(rest.len() - 5)];
        rest = &rest[5 + body.len()..];
        let Ok(request) = StreamRequest::decode(body) else {
            continue;
        };
        let Some(stream_request::Message::Data(frame)) = request.message else {
            continue;
        };
        let _ = frame.timestamp_us.map(micros);
        let Ok(input) = data_in(frame.data) else {
            continue;
        };
        for f32le in [false, true] {
            let again = data_in(Some(data_out(&input, f32le))).expect("our own output reads back");
            assert!(again == input, "changed on the way back: {input:?} → {again:?}");
        }
    }
});
