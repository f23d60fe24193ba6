//! Spoken questions for voice-agent tests, made with the Piper voice (no recordings to ship).

use remotemedia_core::RuntimeData;

/// `text` spoken by the default Piper voice, as 16 kHz mono samples.
pub async fn speak(text: &str) -> Vec<f32> {
    let rt = remotemedia_runtime::runtime();
    let p = rt
        .load(
            "version: v1
nodes:
  - {id: tts, type: PiperTTS}
  - {id: rate, type: AudioResample, params: {target_rate: 16000}}
connections:
  - {from: tts, to: rate}
",
            "speak.yaml",
        )
        .unwrap();
    let out = rt.execute(&p, vec![RuntimeData::text(text)]).await.unwrap();
    out.iter()
        .flat_map(|p| p.data.as_audio().unwrap().samples().to_vec())
        .collect()
}

/// `seconds` of silence at 16 kHz.
pub fn silence(seconds: f64) -> Vec<f32> {
    vec![0.0; (16_000.0 * seconds) as usize]
}
