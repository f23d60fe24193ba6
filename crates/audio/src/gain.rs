//! Scales audio by a gain in decibels.

use async_trait::async_trait;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::frame::audio_input;

/// Settings of [`AudioGain`].
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AudioGainParams {
    /// Gain in dB; negative attenuates.
    #[schemars(range(min = -96.0, max = 48.0))]
    pub gain_db: f32,
}

/// Multiplies every sample by `10^(gain_db/20)`, clamping to [-1, 1].
pub struct AudioGain {
    factor: f32,
}

#[async_trait]
impl Node for AudioGain {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let frame = audio_input(Self::NAME, input)?;
        let samples: Vec<f32> = frame
            .samples()
            .iter()
            .map(|s| (s * self.factor).clamp(-1.0, 1.0))
            .collect();
        out.push(RuntimeData::audio(
            samples,
            frame.sample_rate,
            frame.channels,
        ));
        Ok(())
    }
}

impl NodeType for AudioGain {
    type Params = AudioGainParams;
    const NAME: &'static str = "AudioGain";
    const DESCRIPTION: &'static str = "Scales audio by a gain in dB";

    fn ports() -> Ports {
        Ports::one_to_one(&[MediaType::Audio], &[MediaType::Audio])
    }

    fn new(p: AudioGainParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self {
            factor: 10f32.powf(p.gain_db / 20.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use remotemedia_core::testing::NodeHarness;

    #[tokio::test]
    async fn minus_six_db_halves_the_amplitude() {
        let mut h = NodeHarness::new::<AudioGain>(serde_json::json!({"gain_db": -6.0206})).unwrap();
        let out = h
            .push(RuntimeData::audio(vec![0.8, -0.4], 16_000, 1))
            .await
            .unwrap();
        let a = out[0].as_audio().unwrap();
        assert!((a.samples()[0] - 0.4).abs() < 1e-4);
        assert!((a.samples()[1] + 0.2).abs() < 1e-4);
        let err = h.push(RuntimeData::text("x")).await.unwrap_err();
        assert_eq!(err.message, "AudioGain cannot process text data");
    }
}
