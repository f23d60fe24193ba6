//! Audio file bytes (WAV, FLAC, MP3, Ogg and anything else) decoded to the end: a clear error or
//! audio, never a panic, hang or unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remotemedia_audio::decode::FileDecoder;

fuzz_target!(|data: &[u8]| {
    let Ok(decoder) = FileDecoder::from_bytes("fuzz", data.to_vec(), 20) else {
        return;
    };
    for frame in decoder {
        if frame.is_err() {
            break;
        }
    }
});
