//! The cut of a voice model at its vocoder ([`crate::onnx_graph`]), so audio can come out in
//! pieces, cached on disk so each model is cut once. The encoder half also takes its noise as
//! inputs ([`onnx_graph::seeded_noise`]), so synthesis is repeatable.

use std::path::{Path, PathBuf};

use crate::onnx_graph;

/// The vocoder's first node in Piper's exports; its input is the latent the vocoder decodes.
const VOCODER_ENTRY: &str = "/dec/conv_pre/Conv";

/// Where cut models are kept: the user's cache directory (`$XDG_CACHE_HOME`, else
/// `~/.cache`), so that no other user can plant files there; the temporary directory only when
/// neither is set.
fn cache_root() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("remotemedia")
        .join("piper")
}

/// The cache directory of one model file: a changed file gets a new one.
pub(super) fn split_dir(model: &Path) -> std::io::Result<PathBuf> {
    let meta = std::fs::metadata(model)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let stem = model
        .file_stem()
        .map_or_else(|| "voice".into(), |s| s.to_string_lossy());
    // `v2`: the halves take their noise as inputs.
    Ok(cache_root().join(format!("{stem}-{}-{mtime:x}-v2", meta.len())))
}

/// The encoder and vocoder files cut from `model`, written once into [`cache_root`] (keyed by
/// the model's name, size and modification time) and reused by later processes. `None` when
/// the graph has no recognisable vocoder.
pub(super) fn split_model(model: &Path) -> Result<Option<(PathBuf, PathBuf)>, String> {
    // Threads of one process share the temporary file names below; other processes do not.
    static SPLITTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SPLITTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = split_dir(model).map_err(|e| e.to_string())?;
    let (encoder, vocoder) = (dir.join("encoder.onnx"), dir.join("vocoder.onnx"));
    let ready = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    if ready(&encoder) && ready(&vocoder) {
        return Ok(Some((encoder, vocoder)));
    }
    let bytes = std::fs::read(model).map_err(|e| e.to_string())?;
    let bytes = onnx_graph::seeded_noise(&bytes).map_err(|e| e.to_string())?;
    let graph = onnx_graph::Model::parse(&bytes).map_err(|e| e.to_string())?;
    let Some(latent) = graph
        .node_input(VOCODER_ENTRY, 0)
        .filter(|_| graph.op_type(VOCODER_ENTRY) == Some("Conv"))
    else {
        return Ok(None);
    };
    let inputs = graph.input_names();
    let outputs = graph.output_names();
    // The graph's inputs now include the noise tables, which the encoder reads; a vocoder
    // that needed one would fail to extract ("needed but not given").
    let head = graph
        .extract(&inputs, &[latent])
        .map_err(|e| e.to_string())?;
    let tail = graph
        .extract(&[latent], &outputs)
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Written under a temporary name and renamed, so a concurrent process never reads half.
    for (path, data) in [(&encoder, &head), (&vocoder, &tail)] {
        let part = path.with_extension(format!("{}.part", std::process::id()));
        std::fs::write(&part, data).map_err(|e| format!("{}: {e}", part.display()))?;
        std::fs::rename(&part, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Some((encoder, vocoder)))
}
