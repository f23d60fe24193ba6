//! Converts between the pipeline's audio frames (interleaved f32) and raw PCM bytes, and
//! changes the channel count.
//!
//! Raw PCM is what devices, codecs and network peers speak: 16- or 32-bit integers or 32-bit
//! floats, little-endian, interleaved (`LRLR…`) or planar (`LL…RR…`); [`SampleFormat`] says how
//! each maps to floats.

use async_trait::async_trait;
use bytes::Bytes;
use remotemedia_core::node::{NodeType, Ports};
use remotemedia_core::{MediaType, Node, NodeContext, NodeError, Outputs, Packet, RuntimeData};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::frame::{MAX_CHANNELS, MAX_SAMPLE_RATE as MAX_RATE};
pub use crate::pcm::SampleFormat;

/// Order of samples of several channels in raw PCM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One frame after another, channels alternating: `L R L R …`.
    #[default]
    Interleaved,
    /// One channel after another: `L L … R R …`.
    Planar,
}

/// What binary inputs hold, since raw bytes do not say it themselves.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PcmInput {
    pub sample_format: SampleFormat,
    #[serde(default)]
    pub layout: Layout,
    #[schemars(range(min = 1, max = 384_000))]
    pub sample_rate: u32,
    #[schemars(range(min = 1, max = 64))]
    pub channels: u16,
}

/// What the node emits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Audio frames (interleaved f32).
    #[default]
    Audio,
    /// Raw PCM bytes in `sample_format` and `layout`.
    Pcm,
}

/// Settings of [`FormatConverter`].
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FormatConverterParams {
    pub output: OutputKind,
    /// Sample format of PCM output.
    pub sample_format: SampleFormat,
    /// Layout of PCM output.
    pub layout: Layout,
    /// Output channel count; unset keeps the input's. Mono output averages all channels, mono
    /// input is copied to every channel; otherwise output channel `j` takes input channel
    /// `j mod inputs` (dropping extra channels or repeating them).
    #[schemars(range(min = 1, max = 64))]
    pub channels: Option<u16>,
    /// Required to accept binary (raw PCM) input.
    pub input: Option<PcmInput>,
}

/// Sample format, layout and channel-count conversion.
pub struct FormatConverter {
    p: FormatConverterParams,
}

impl FormatConverter {
    /// Raw PCM input as interleaved f32 with its rate and channel count.
    fn decode_pcm(&self, bytes: &[u8]) -> Result<(Vec<f32>, u32, u16), NodeError> {
        let Some(fmt) = &self.p.input else {
            return Err(NodeError::fatal(format!(
                "{} got binary data but has no `input` params saying what PCM it holds",
                Self::NAME
            )));
        };
        let ch = usize::from(fmt.channels.max(1));
        let width = fmt.sample_format.bytes();
        if !bytes.len().is_multiple_of(width * ch) {
            return Err(NodeError::fatal(format!(
                "{}: {} bytes is not a whole number of {ch}-channel {} frames ({} bytes each)",
                Self::NAME,
                bytes.len(),
                fmt.sample_format.name(),
                width * ch
            )));
        }
        let samples: Vec<f32> = bytes
            .chunks_exact(width)
            .map(|b| fmt.sample_format.read(b))
            .collect();
        let samples = match fmt.layout {
            Layout::Interleaved => samples,
            Layout::Planar => interleave(&samples, ch),
        };
        Ok((samples, fmt.sample_rate, fmt.channels.max(1)))
    }
}

/// Planar → interleaved.
fn interleave(planar: &[f32], ch: usize) -> Vec<f32> {
    let n = planar.len() / ch;
    (0..n)
        .flat_map(|i| (0..ch).map(move |c| planar[c * n + i]))
        .collect()
}

/// Changes the channel count of interleaved samples.
pub fn remix(samples: &[f32], from: usize, to: usize) -> Vec<f32> {
    if from == to {
        return samples.to_vec();
    }
    if to == 1 {
        return crate::frame::downmix(samples, from).collect();
    }
    samples
        .chunks_exact(from)
        .flat_map(|f| (0..to).map(move |j| f[j % from]))
        .collect()
}

#[async_trait]
impl Node for FormatConverter {
    async fn process(
        &mut self,
        _: usize,
        input: &Packet,
        out: &mut Outputs,
    ) -> Result<(), NodeError> {
        let target = self.p.channels;
        let (samples, rate, channels) = match &input.data {
            RuntimeData::Audio(a) => {
                let keeps_everything = target.is_none_or(|c| c == a.channels);
                if keeps_everything && self.p.output == OutputKind::Audio {
                    out.push(input.data.clone());
                    return Ok(());
                }
                (a.samples().to_vec(), a.sample_rate, a.channels)
            }
            RuntimeData::Binary(b) => self.decode_pcm(b)?,
            other => return Err(NodeError::unsupported(Self::NAME, other)),
        };
        if rate == 0 || rate > MAX_RATE || channels > MAX_CHANNELS {
            return Err(NodeError::fatal(format!(
                "{}: unsupported audio format {rate} Hz × {channels} ch",
                Self::NAME
            )));
        }
        let to = target.unwrap_or(channels);
        let samples = remix(&samples, usize::from(channels), usize::from(to));
        let data = match self.p.output {
            OutputKind::Audio => RuntimeData::audio(samples, rate, to),
            OutputKind::Pcm => {
                let ordered = match self.p.layout {
                    Layout::Interleaved => samples,
                    Layout::Planar => deinterleave(&samples, usize::from(to)),
                };
                let mut bytes = Vec::with_capacity(ordered.len() * self.p.sample_format.bytes());
                for x in ordered {
                    self.p.sample_format.write(x, &mut bytes);
                }
                RuntimeData::Binary(Bytes::from(bytes))
            }
        };
        out.push(data);
        Ok(())
    }
}

/// Interleaved → planar.
fn deinterleave(samples: &[f32], ch: usize) -> Vec<f32> {
    (0..ch)
        .flat_map(|c| samples.iter().skip(c).step_by(ch).copied())
        .collect()
}

impl NodeType for FormatConverter {
    type Params = FormatConverterParams;
    const NAME: &'static str = "FormatConverter";
    const DESCRIPTION: &'static str = "Converts between audio frames and raw PCM (i16/i32/f32, interleaved/planar) and changes the channel count";

    fn ports() -> Ports {
        Ports::one_to_one(
            &[MediaType::Audio, MediaType::Binary],
            &[MediaType::Audio, MediaType::Binary],
        )
    }

    fn new(p: FormatConverterParams, _: &NodeContext) -> Result<Self, NodeError> {
        Ok(Self { p })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testing::passes_without_a_copy;
    use remotemedia_core::testing::NodeHarness;
    use serde_json::json;

    async fn one(params: serde_json::Value, data: RuntimeData) -> RuntimeData {
        let mut h = NodeHarness::new::<FormatConverter>(params).unwrap();
        h.push(data).await.unwrap().remove(0)
    }

    fn bytes(d: &RuntimeData) -> Bytes {
        match d {
            RuntimeData::Binary(b) => b.clone(),
            _ => panic!("not binary"),
        }
    }

    #[tokio::test]
    async fn i16_round_trips_exactly_through_f32() {
        let ints: Vec<i16> = vec![i16::MIN, -12345, -1, 0, 1, 777, i16::MAX];
        let pcm: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
        let input = json!({"input": {"sample_format": "i16", "sample_rate": 16000, "channels": 1}});
        let audio = one(input, RuntimeData::Binary(pcm.clone().into())).await;
        let a = audio.as_audio().unwrap();
        assert_eq!((a.sample_rate, a.channels, a.frames()), (16_000, 1, 7));
        assert_eq!(a.samples()[0], -1.0);
        let back = one(json!({"output": "pcm", "sample_format": "i16"}), audio).await;
        assert_eq!(bytes(&back).as_ref(), pcm.as_slice());
    }

    #[tokio::test]
    async fn f32_to_i32_and_back_is_exact_and_f32_pcm_is_bit_exact() {
        let xs = vec![0.5f32, -0.25, 0.123_456_79, -1.0, 0.999_999_9];
        let audio = RuntimeData::audio(xs.clone(), 48_000, 1);
        for fmt in ["i32", "f32"] {
            let pcm = one(
                json!({"output": "pcm", "sample_format": fmt}),
                audio.clone(),
            )
            .await;
            let input =
                json!({"input": {"sample_format": fmt, "sample_rate": 48000, "channels": 1}});
            let back = one(input, pcm).await;
            assert_eq!(back.as_audio().unwrap().samples(), xs.as_slice(), "{fmt}");
        }
    }

    #[tokio::test]
    async fn f32_to_i16_rounds_and_clips() {
        let audio = RuntimeData::audio(vec![1.5, -1.5, 0.5, 1.0 / 65536.0 * 1.01], 8_000, 1);
        let pcm = bytes(&one(json!({"output": "pcm"}), audio).await);
        let ints: Vec<i16> = pcm
            .chunks(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(ints, vec![i16::MAX, i16::MIN, 16384, 1]);
    }

    #[tokio::test]
    async fn planar_and_interleaved_convert_into_each_other() {
        // Stereo frames (1,-1), (2,-2), (3,-3) as planar i16 steps.
        let planar: Vec<u8> = [1i16, 2, 3, -1, -2, -3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = json!({"input": {"sample_format": "i16", "layout": "planar", "sample_rate": 8000, "channels": 2}});
        let audio = one(p, RuntimeData::Binary(planar.clone().into())).await;
        let s: Vec<i32> = audio
            .as_audio()
            .unwrap()
            .samples()
            .iter()
            .map(|x| (x * 32768.0) as i32)
            .collect();
        assert_eq!(s, vec![1, -1, 2, -2, 3, -3]);
        let back = one(json!({"output": "pcm", "layout": "planar"}), audio).await;
        assert_eq!(bytes(&back).as_ref(), planar.as_slice());
    }

    #[tokio::test]
    async fn downmix_averages_and_upmix_copies() {
        let stereo = RuntimeData::audio(vec![0.2, 0.4, -1.0, 1.0], 16_000, 2);
        let mono = one(json!({"channels": 1}), stereo).await;
        let m = mono.as_audio().unwrap();
        assert_eq!(m.channels, 1);
        assert!((m.samples()[0] - 0.3).abs() < 1e-7 && m.samples()[1] == 0.0);
        let quad = one(
            json!({"channels": 4}),
            RuntimeData::audio(vec![0.1, 0.2], 16_000, 1),
        )
        .await;
        assert_eq!(
            quad.as_audio().unwrap().samples(),
            &[0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2]
        );
    }

    #[tokio::test]
    async fn unchanged_audio_passes_without_a_copy() {
        let mut h = NodeHarness::new::<FormatConverter>(json!({"channels": 2})).unwrap();
        let a = RuntimeData::audio(vec![0.1; 8], 16_000, 2);
        assert!(passes_without_a_copy(&mut h, a).await);
    }

    #[tokio::test]
    async fn bad_pcm_is_a_clear_error() {
        let mut h = NodeHarness::new::<FormatConverter>(json!({})).unwrap();
        let err = h
            .push(RuntimeData::Binary(vec![0u8; 4].into()))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "FormatConverter got binary data but has no `input` params saying what PCM it holds"
        );
        let p = json!({"input": {"sample_format": "i16", "sample_rate": 16000, "channels": 2}});
        let mut h = NodeHarness::new::<FormatConverter>(p).unwrap();
        let err = h
            .push(RuntimeData::Binary(vec![0u8; 6].into()))
            .await
            .unwrap_err();
        assert_eq!(
            err.message,
            "FormatConverter: 6 bytes is not a whole number of 2-channel s16le frames (4 bytes each)"
        );
        let err = h.push(RuntimeData::text("x")).await.unwrap_err();
        assert_eq!(err.message, "FormatConverter cannot process text data");
    }
}
