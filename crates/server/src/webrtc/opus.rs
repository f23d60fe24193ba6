//! Opus encoding for the reply track, through the system's libopus (Debian: `libopus-dev`):
//! three C functions, so a binding crate (which would build its own libopus with cmake) is not
//! worth it. Decoding uses the pure-Rust `opus-decoder` crate.

use std::ffi::{CStr, c_char, c_int};
use std::ptr::NonNull;

#[repr(C)]
struct OpusEncoder {
    _private: [u8; 0],
}

#[link(name = "opus")]
unsafe extern "C" {
    fn opus_encoder_create(
        fs: i32,
        channels: c_int,
        application: c_int,
        error: *mut c_int,
    ) -> *mut OpusEncoder;
    fn opus_encode_float(
        st: *mut OpusEncoder,
        pcm: *const f32,
        frame_size: c_int,
        data: *mut u8,
        max_data_bytes: i32,
    ) -> i32;
    fn opus_encoder_destroy(st: *mut OpusEncoder);
    fn opus_strerror(error: c_int) -> *const c_char;
}

/// `OPUS_APPLICATION_VOIP`: tuned for speech.
const APPLICATION_VOIP: c_int = 2048;

fn error_text(code: c_int) -> String {
    // SAFETY: opus_strerror returns a static NUL-terminated string for any code.
    unsafe { CStr::from_ptr(opus_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

/// One Opus encoder (one stream, one channel count).
pub struct Encoder {
    st: NonNull<OpusEncoder>,
    channels: usize,
}

// SAFETY: the encoder state is plain memory owned by this value; libopus has no thread affinity.
unsafe impl Send for Encoder {}

impl Encoder {
    pub fn new(rate: u32, channels: usize) -> Result<Self, String> {
        let mut err = 0;
        // SAFETY: valid arguments; the result is checked for null before use.
        let st = unsafe {
            opus_encoder_create(rate as i32, channels as c_int, APPLICATION_VOIP, &mut err)
        };
        match NonNull::new(st) {
            Some(st) if err == 0 => Ok(Self { st, channels }),
            _ => Err(format!("opus encoder: {}", error_text(err))),
        }
    }

    /// Encodes one frame (2.5–60 ms of interleaved samples) into `out`; returns the packet.
    pub fn encode<'a>(&mut self, pcm: &[f32], out: &'a mut [u8]) -> Result<&'a [u8], String> {
        let frames = pcm.len() / self.channels;
        // SAFETY: `pcm` holds `frames * channels` samples and `out` is writable for its length.
        let n = unsafe {
            opus_encode_float(
                self.st.as_ptr(),
                pcm.as_ptr(),
                frames as c_int,
                out.as_mut_ptr(),
                out.len() as i32,
            )
        };
        if n < 0 {
            return Err(format!("opus encode: {}", error_text(n)));
        }
        Ok(&out[..n as usize])
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create and destroyed once.
        unsafe { opus_encoder_destroy(self.st.as_ptr()) }
    }
}
