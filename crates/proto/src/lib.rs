//! RemoteMedia's gRPC protocol (`proto/remotemedia/v1/pipeline.proto`): the generated
//! messages with client and server stubs, the encoded descriptors the reflection service
//! serves, and the conversion of a message's data to and from the runtime's values.
//!
//! The server and the remote executor speak it; so may any Rust client:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use remotemedia_proto::pipeline_service_client::PipelineServiceClient;
//! let mut client = PipelineServiceClient::connect("http://127.0.0.1:50051").await?;
//! let reply = client.list_pipelines(remotemedia_proto::ListPipelinesRequest {}).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use remotemedia_core::{Control, ImageFrame, RuntimeData, TextFrame};
use tonic::Status;

use data::Kind;

tonic::include_proto!("remotemedia.v1");

/// Encoded descriptors of the protocol, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Largest sample rate and channel count a client may declare (as the file decoders accept).
const MAX_RATE: u32 = 384_000;
const MAX_CHANNELS: u32 = 64;

/// A client's data, checked: INVALID_ARGUMENT names what is wrong.
pub fn data_in(data: Option<Data>) -> Result<RuntimeData, Status> {
    let kind = data
        .and_then(|d| d.kind)
        .ok_or_else(|| Status::invalid_argument("data frame without data"))?;
    Ok(match kind {
        Kind::Audio(mut a) => {
            if !a.samples_f32le.is_empty() {
                if !a.samples.is_empty() {
                    return Err(Status::invalid_argument(
                        "audio has both samples and samples_f32le; send one",
                    ));
                }
                if a.samples_f32le.len() % 4 != 0 {
                    return Err(Status::invalid_argument(format!(
                        "samples_f32le has {} bytes, not a whole number of 4-byte floats",
                        a.samples_f32le.len()
                    )));
                }
                a.samples = a
                    .samples_f32le
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
            }
            if a.sample_rate == 0 || a.sample_rate > MAX_RATE {
                return Err(Status::invalid_argument(format!(
                    "audio sample_rate {} is out of range (1..={MAX_RATE})",
                    a.sample_rate
                )));
            }
            let channels = a.channels.max(1);
            if channels > MAX_CHANNELS {
                return Err(Status::invalid_argument(format!(
                    "audio channels {channels} is out of range (1..={MAX_CHANNELS})"
                )));
            }
            if a.samples.len() % channels as usize != 0 {
                return Err(Status::invalid_argument(format!(
                    "audio has {} samples, not a whole number of {channels}-channel frames",
                    a.samples.len()
                )));
            }
            if a.samples.iter().any(|s| !s.is_finite()) {
                return Err(Status::invalid_argument("audio samples must be finite"));
            }
            RuntimeData::audio(a.samples, a.sample_rate, channels as u16)
        }
        Kind::Text(t) => RuntimeData::Text(TextFrame {
            text: t.text.into(),
            is_final: t.is_final,
            span: t.span.map(|s| (micros(s.start_us), micros(s.end_us))),
        }),
        Kind::Json(j) => RuntimeData::json(
            serde_json::from_str(&j)
                .map_err(|e| Status::invalid_argument(format!("json data is not JSON: {e}")))?,
        ),
        Kind::Binary(b) => RuntimeData::Binary(b.into()),
        Kind::Image(i) => RuntimeData::Image(ImageFrame {
            width: i.width,
            height: i.height,
            format: i.format.into(),
            data: i.data.into(),
        }),
        Kind::Control(c) => RuntimeData::Control(match control_data::Kind::try_from(c.kind) {
            Ok(control_data::Kind::Flush) => Control::Flush,
            Ok(control_data::Kind::Cancel) => Control::Cancel {
                reason: c.reason.into(),
            },
            Ok(control_data::Kind::EndOfStream) => Control::EndOfStream,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "unknown control kind {}",
                    c.kind
                )));
            }
        }),
    })
}

/// Time in µs since the stream started; negative values count as 0.
pub fn micros(us: i64) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

/// Time as the protocol states it: µs, saturating.
pub fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// `f32le`: audio samples as little-endian bytes rather than repeated floats.
pub fn data_out(data: &RuntimeData, f32le: bool) -> Data {
    let kind = match data {
        RuntimeData::Audio(a) => {
            let (samples, samples_f32le) = if f32le {
                let bytes = a.samples().iter().flat_map(|s| s.to_le_bytes()).collect();
                (Vec::new(), bytes)
            } else {
                (a.samples().to_vec(), Vec::new())
            };
            Kind::Audio(AudioBuffer {
                samples,
                sample_rate: a.sample_rate,
                channels: u32::from(a.channels),
                samples_f32le,
            })
        }
        RuntimeData::Text(t) => Kind::Text(TextData {
            text: t.text.to_string(),
            is_final: t.is_final,
            span: t.span.map(|(s, e)| Span {
                start_us: us(s),
                end_us: us(e),
            }),
        }),
        RuntimeData::Json(v) => Kind::Json(v.to_string()),
        RuntimeData::Binary(b) => Kind::Binary(b.to_vec()),
        RuntimeData::Image(i) => Kind::Image(ImageData {
            width: i.width,
            height: i.height,
            format: i.format.to_string(),
            data: i.data.to_vec(),
        }),
        RuntimeData::Control(c) => {
            use control_data::Kind as K;
            let (kind, reason) = match c {
                Control::Flush => (K::Flush, String::new()),
                Control::Cancel { reason } => (K::Cancel, reason.to_string()),
                Control::EndOfStream => (K::EndOfStream, String::new()),
            };
            Kind::Control(ControlData {
                kind: kind as i32,
                reason,
            })
        }
    };
    Data { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `stream_request` fuzz target: without serde_json's exact float parsing this
    /// number came back one unit in the last place lower.
    #[test]
    fn json_numbers_come_back_as_sent() {
        let sent = "[9.888888888888889e26, 0.1, -1.7976931348623157e308, 5e-324]";
        let data = Data {
            kind: Some(Kind::Json(sent.into())),
        };
        let input = data_in(Some(data)).unwrap();
        let again = data_in(Some(data_out(&input, false))).unwrap();
        assert_eq!(again, input);
        let Some(Kind::Json(text)) = data_out(&again, false).kind else {
            panic!("not JSON")
        };
        let numbers: Vec<f64> = serde_json::from_str(&text).unwrap();
        assert_eq!(
            numbers,
            [9.888888888888889e26, 0.1, -1.7976931348623157e308, 5e-324]
        );
    }
}
