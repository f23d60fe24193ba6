//! Cues already spoken, kept on disk by what made them (text, voice and its model version,
//! speed), so that a re-run after editing one cue speaks only that cue.
//!
//! An entry is one file named by a hash of its key, holding the whole key (checked on read, so
//! a hash collision is a miss, never wrong audio), the sample rate and the samples. Entries are
//! written under a temporary name and renamed, so a crash never leaves half an entry.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::voices::Clip;

const MAGIC: &[u8; 8] = b"RMDUB01\n";

/// A cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Uses (and creates) `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{:016x}.clip", fnv1a(key.as_bytes())))
    }

    /// The clip stored under `key`, if any (a damaged or foreign file is a miss).
    pub fn get(&self, key: &str) -> Option<Clip> {
        let mut bytes = Vec::new();
        std::fs::File::open(self.path(key))
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .ok()?;
        let rest = bytes.strip_prefix(MAGIC)?;
        let (len, rest) = take_u64(rest)?;
        let (stored, rest) = rest.split_at_checked(usize::try_from(len).ok()?)?;
        if stored != key.as_bytes() {
            return None;
        }
        let (rate, rest) = take_u64(rest)?;
        if rest.len() % 4 != 0 {
            return None;
        }
        let samples = rest
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Some(Clip {
            samples,
            rate: u32::try_from(rate).ok()?,
        })
    }

    /// Stores `clip` under `key`. A failure is logged, not fatal: the job has its audio.
    pub fn put(&self, key: &str, clip: &Clip) {
        let path = self.path(key);
        let part = path.with_extension(format!("part{}", std::process::id()));
        let mut bytes = Vec::with_capacity(32 + key.len() + clip.samples.len() * 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(&u64::from(clip.rate).to_le_bytes());
        for s in &clip.samples {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        let written = std::fs::File::create(&part)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|()| std::fs::rename(&part, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&part);
            tracing::warn!(path = %path.display(), "cannot cache a cue: {e}");
        }
    }
}

fn take_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_at_checked(8)?;
    Some((u64::from_le_bytes(head.try_into().ok()?), rest))
}

/// FNV-1a, 64 bits: stable across builds and platforms, unlike the standard library's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_come_back_by_their_whole_key() {
        let dir = std::env::temp_dir().join(format!("rm-dub-cache-{}", std::process::id()));
        let cache = Cache::open(&dir).unwrap();
        let clip = Clip {
            samples: vec![0.5, -0.25, 1e-7],
            rate: 22_050,
        };
        assert_eq!(cache.get("a"), None);
        cache.put("a", &clip);
        assert_eq!(cache.get("a"), Some(clip.clone()));
        assert_eq!(cache.get("b"), None);
        // A file under the key's name that holds another key is a miss.
        std::fs::copy(cache.path("a"), cache.path("b")).unwrap();
        assert_eq!(cache.get("b"), None);
        std::fs::write(cache.path("a"), b"RMDUB01\nshort").unwrap();
        assert_eq!(cache.get("a"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
