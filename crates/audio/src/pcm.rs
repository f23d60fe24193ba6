//! How raw PCM stores a sample: what both PCM input (`decode::PcmReader`) and PCM conversion
//! (`FormatConverter`) read and write, so neither module needs the other.
//!
//! Integers map to floats by dividing by 2^15 or 2^31, so i16 → f32 → i16 is exact, and f32 →
//! i16 rounds to the nearest step and clips to the integer range.

use schemars::JsonSchema;
use serde::Deserialize;

/// How one sample is stored in raw PCM (always little-endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    #[default]
    I16,
    I32,
    F32,
}

impl SampleFormat {
    pub fn name(self) -> &'static str {
        match self {
            SampleFormat::I16 => "s16le",
            SampleFormat::I32 => "s32le",
            SampleFormat::F32 => "f32le",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            SampleFormat::I16 => 2,
            SampleFormat::I32 | SampleFormat::F32 => 4,
        }
    }

    pub(crate) fn write(self, x: f32, out: &mut Vec<u8>) {
        match self {
            SampleFormat::I16 => {
                let v = (f64::from(x) * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                out.extend_from_slice(&v.to_le_bytes());
            }
            SampleFormat::I32 => {
                let v = (f64::from(x) * 2147483648.0).round() as i32;
                out.extend_from_slice(&v.to_le_bytes());
            }
            SampleFormat::F32 => out.extend_from_slice(&x.to_le_bytes()),
        }
    }

    /// One little-endian sample as a float in [-1, 1] (floats as they are).
    pub(crate) fn read(self, b: &[u8]) -> f32 {
        match self {
            SampleFormat::I16 => f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0,
            SampleFormat::I32 => {
                (f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])) / 2147483648.0) as f32
            }
            SampleFormat::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }
}
