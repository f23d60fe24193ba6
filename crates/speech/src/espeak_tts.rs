//! Formant text to speech with espeak-ng itself: robotic but tiny and about a hundred times
//! faster than real time, for machines without the neural voice or as a fallback.

use std::sync::Arc;

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::espeak::{Espeak, EspeakError};
use crate::tts::{self, Script, Unspoken};

/// Settings of [`EspeakTTSNode`].
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EspeakTtsParams {
    /// espeak-ng voice ("en-us", "de", "fr", ...; `espeak-ng --voices` lists them).
    pub voice: String,
    /// Words per minute.
    #[schemars(range(min = 80, max = 450))]
    pub rate: u32,
    /// Base pitch, 0–100.
    #[schemars(range(max = 100))]
    pub pitch: u32,
}

impl Default for EspeakTtsParams {
    fn default() -> Self {
        Self {
            voice: "en-us".into(),
            rate: 175,
            pitch: 50,
        }
    }
}

/// Speaks text with espeak-ng's own synthesiser: one mono audio output per input at espeak-ng's
/// rate (22 050 Hz), stamped with the input's timestamp. The whole input is one output: at this
/// speed, splitting it would gain no latency.
///
/// Skips and reports exactly as [`crate::PiperTTSNode`] does: blank input gives nothing; text
/// with nothing the voice can read is rejected (reported at once, the session goes on).
pub struct EspeakTTSNode {
    voice: Arc<str>,
    rate: u32,
    pitch: u32,
    scripts: Option<&'static [Script]>,
}

impl EspeakTTSNode {
    fn fatal(e: impl std::fmt::Display) -> NodeError {
        NodeError::fatal(format!("{}: {e}", Self::NAME))
    }
}

#[async_trait]
impl Node for EspeakTTSNode {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let Some(frame) = input.data.as_text() else {
            return Err(NodeError::unsupported(Self::NAME, &input.data));
        };
        if tts::is_blank(&frame.text) {
            return Ok(());
        }
        let mut spoken = Vec::new();
        let mut unspoken = Vec::new();
        for sentence in tts::split_sentences(&frame.text) {
            let cleaned = tts::clean(&sentence, self.scripts);
            if !cleaned.removed.is_empty() {
                unspoken.push(Unspoken {
                    text: cleaned.removed.join(" "),
                    reason: tts::UNSUPPORTED_SCRIPT,
                });
            }
            if cleaned.speakable() {
                spoken.push(cleaned.text);
            }
        }
        for u in &unspoken {
            tracing::warn!(node = Self::NAME, "not spoken: {u}");
        }
        if spoken.is_empty() {
            if unspoken.is_empty() {
                return Ok(());
            }
            return Err(tts::nothing_to_say(Self::NAME, &frame.text, &unspoken));
        }
        let text = spoken.join(" ");
        let (voice, rate, pitch) = (Arc::clone(&self.voice), self.rate, self.pitch);
        let result = tts::off_reactor(move || -> Result<(Vec<f32>, u32), EspeakError> {
            let mut espeak = Espeak::lock()?;
            espeak.set_voice(&voice)?;
            let samples = espeak.synthesize(&text, rate, pitch)?;
            Ok((samples, espeak.sample_rate()))
        })
        .await
        .map_err(Self::fatal)?;
        let (samples, sample_rate) = result.map_err(Self::fatal)?;
        if !samples.is_empty() {
            out.push_at(RuntimeData::audio(samples, sample_rate, 1), input.timestamp);
        }
        Ok(())
    }
}

impl NodeType for EspeakTTSNode {
    type Params = EspeakTtsParams;
    const NAME: &'static str = "EspeakTTS";
    const DESCRIPTION: &'static str = "Speaks text with espeak-ng (robotic, very fast; 22.05 kHz mono), one audio output per input";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Text], &[MediaType::Audio])
    }

    fn new(p: EspeakTtsParams, _: &NodeContext) -> Result<Self, NodeError> {
        if !(80..=450).contains(&p.rate) {
            return Err(Self::fatal(format!(
                "rate must be between 80 and 450 words per minute, not {}",
                p.rate
            )));
        }
        if p.pitch > 100 {
            return Err(Self::fatal(format!(
                "pitch must be between 0 and 100, not {}",
                p.pitch
            )));
        }
        // Fails now, with the install command, rather than at the first sentence.
        Espeak::lock()
            .and_then(|mut e| e.set_voice(&p.voice))
            .map_err(Self::fatal)?;
        Ok(Self {
            scripts: tts::language_scripts(&p.voice),
            voice: p.voice.into(),
            rate: p.rate,
            pitch: p.pitch,
        })
    }
}
