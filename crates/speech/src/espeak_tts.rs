//! Formant text to speech with espeak-ng itself: robotic but tiny and about a hundred times
//! faster than real time, for machines without the neural voice or as a fallback.

use std::sync::Arc;

use async_trait::async_trait;
use remotemedia_audio::frame::fatal;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{MediaType, Node, NodeContext, NodeError, Outputs, Packet};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::espeak::Espeak;
use crate::tts::{self, Script, Spoken};

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

#[async_trait]
impl Node for EspeakTTSNode {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let (voice, rate, pitch) = (Arc::clone(&self.voice), self.rate, self.pitch);
        let scripts = self.scripts;
        tts::speak_input(Self::NAME, input, out, 0, move |text| {
            let mut unspoken = Vec::new();
            let spoken: Vec<String> = tts::split_sentences(text)
                .iter()
                .filter_map(|s| tts::speakable(s, scripts, &mut unspoken))
                .collect();
            if spoken.is_empty() {
                return Ok(Spoken {
                    audio: Vec::new(),
                    sample_rate: 0,
                    unspoken,
                });
            }
            let mut espeak = Espeak::lock()?;
            espeak.set_voice(&voice)?;
            let samples = espeak.synthesize(&spoken.join(" "), rate, pitch)?;
            Ok(Spoken {
                audio: vec![samples],
                sample_rate: espeak.sample_rate(),
                unspoken,
            })
        })
        .await
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
        // Fails now, with the install command, rather than at the first sentence.
        Espeak::lock()
            .and_then(|mut e| e.set_voice(&p.voice))
            .map_err(|e| fatal(Self::NAME, e))?;
        Ok(Self {
            scripts: tts::language_scripts(&p.voice),
            voice: p.voice.into(),
            rate: p.rate,
            pitch: p.pitch,
        })
    }
}
