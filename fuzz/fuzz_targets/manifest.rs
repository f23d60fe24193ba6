//! Manifest text (YAML or JSON) through parsing and validation against the core and audio node
//! types: errors, never panics or hangs.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use remotemedia_core::{Runtime, RuntimeBuilder};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        RuntimeBuilder::new()
            .nodes(remotemedia_audio::register)
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = runtime().load(text, "fuzz.yaml");
});
