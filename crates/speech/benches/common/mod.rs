//! What the benches share.

/// The `beckett.wav` recording (16 kHz mono speech) from the models directory.
pub fn recording() -> Vec<f32> {
    let path = remotemedia_speech::models::models_dir().join("samples/beckett.wav");
    let mut reader = hound::WavReader::open(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; install the models with ./scripts/setup-models.sh",
            path.display()
        )
    });
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect()
}
