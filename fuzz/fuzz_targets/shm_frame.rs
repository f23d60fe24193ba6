//! Frames read from the shared memory between the runtime and a Python worker: a worker may be
//! buggy or hostile, so any bytes decode to a frame or an error, never a panic or an
//! out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remotemedia_python_executor::frame;

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode(data);
});
