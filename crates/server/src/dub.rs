//! The dubbing job as a unary call (`DubbingService.Dub`): the library `remotemedia dub` runs,
//! on this process's voices, so every call after the first finds them loaded.

use std::sync::Arc;

use remotemedia_dub::{AudioFormat, DubError, DubOptions, VoiceSpec};
use tonic::{Request, Response, Status};

use crate::proto;
use crate::shared::Shared;

pub struct Service {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl proto::dubbing_service_server::DubbingService for Service {
    async fn dub(
        &self,
        request: Request<proto::DubRequest>,
    ) -> Result<Response<proto::DubResponse>, Status> {
        let req = request.into_inner();
        // A place among the server's sessions for as long as the job runs.
        let _ticket = self
            .shared
            .admission
            .admit(None)
            .map_err(|r| self.shared.stats.refuse(r.into()))?;
        let format = match req.format.as_str() {
            "" | "wav" => AudioFormat::Wav,
            "flac" => AudioFormat::Flac,
            other => {
                return Err(Status::invalid_argument(format!(
                    "format {other:?}: expected \"wav\" or \"flac\""
                )));
            }
        };
        // The original audio goes through a file, as the library reads it.
        let mix = match req.mix_with.is_empty() {
            true => None,
            false => Some(MixFile::write(&req.mix_with)?),
        };
        let defaults = DubOptions::default();
        let options = DubOptions {
            workers: match req.workers {
                0 => defaults.workers,
                n => (n as usize).min(defaults.workers),
            },
            lang: Some(req.lang)
                .filter(|l| !l.is_empty())
                .unwrap_or(defaults.lang),
            voices: voices(req.voices)?,
            characters: voices(req.characters)?,
            max_speedup: match req.max_speedup {
                0.0 => defaults.max_speedup,
                s => s,
            },
            duration: match req.duration_s {
                0.0 => None,
                s => Some(remotemedia_dub::track_length(s).map_err(invalid)?),
            },
            mix_with: mix.as_ref().map(|m| m.0.clone()),
            duck_db: match req.duck_db {
                0.0 => defaults.duck_db,
                d => d,
            },
            sample_rate: Some(req.sample_rate).filter(|&r| r > 0),
            cache: None,
        };
        let dubbed = remotemedia_dub::dub(&req.subtitles, &options, &|_, _| {})
            .await
            .map_err(invalid)?;
        let audio = remotemedia_dub::encode(&dubbed, format)
            .map_err(|e| Status::internal(e.to_string()))?;
        let retimed = dubbed.retimed_text(dubbed.format);
        Ok(Response::new(proto::DubResponse {
            audio,
            format: match format {
                AudioFormat::Wav => "wav",
                AudioFormat::Flac => "flac",
            }
            .into(),
            sample_rate: dubbed.sample_rate,
            channels: u32::from(dubbed.channels),
            report_json: dubbed.report.to_json(),
            retimed,
        }))
    }
}

fn invalid(e: DubError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Voices as a client may name them: the bundled Piper voice and espeak-ng voices. A voice
/// file would let a client make the server read any path.
fn voices(
    map: std::collections::HashMap<String, String>,
) -> Result<Vec<(String, VoiceSpec)>, Status> {
    let mut out: Vec<(String, VoiceSpec)> = map
        .into_iter()
        .map(|(key, voice)| {
            let spec = voice
                .parse::<VoiceSpec>()
                .map_err(|e| Status::invalid_argument(format!("{key}: {e}")))?;
            match &spec {
                VoiceSpec::Piper(_) if spec != VoiceSpec::default_piper() => {
                    Err(Status::permission_denied(format!(
                        "{key}={voice}: clients may name the bundled voice (`piper`) and \
                         espeak-ng voices (`espeak:NAME`), not voice files"
                    )))
                }
                _ => Ok((key, spec)),
            }
        })
        .collect::<Result<_, _>>()?;
    out.sort();
    Ok(out)
}

/// The client's original audio in a temporary file, removed when dropped.
struct MixFile(std::path::PathBuf);

impl MixFile {
    fn write(bytes: &[u8]) -> Result<Self, Status> {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("remotemedia-dub-mix-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes)
            .map_err(|e| Status::internal(format!("keeping the mix_with audio: {e}")))?;
        Ok(Self(path))
    }
}

impl Drop for MixFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
