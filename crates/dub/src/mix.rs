//! The track: speech trimmed of its silent edges, placed, and mixed over the original audio
//! with that audio lowered ("ducked") under speech.

/// Below this amplitude a sample counts as silence when trimming (about -54 dBFS).
const SILENCE: f32 = 0.002;
/// Silence kept on each side of trimmed speech.
const TRIM_MARGIN_MS: usize = 10;
/// Length of the fades into and out of the ducked level.
pub const DUCK_FADE_MS: usize = 60;

/// `samples` without the silence before its first and after its last sound, keeping a few
/// milliseconds on each side so no onset or tail is clipped.
pub fn trim(samples: &[f32], rate: u32) -> &[f32] {
    let margin = rate as usize * TRIM_MARGIN_MS / 1000;
    let loud = |s: &f32| s.abs() > SILENCE;
    let Some(first) = samples.iter().position(loud) else {
        return &[];
    };
    let last = samples.iter().rposition(loud).unwrap_or(first);
    &samples[first.saturating_sub(margin)..(last + 1 + margin).min(samples.len())]
}

/// Lowers interleaved `audio` by `db` decibels over each region (`[start, end)` in frames),
/// fading in and out over `fade` frames outside it. Regions closer than two fades are joined,
/// so the level never bobs up between two close cues.
pub fn duck(audio: &mut [f32], channels: usize, regions: &[(usize, usize)], db: f32, fade: usize) {
    let channels = channels.max(1);
    let frames = audio.len() / channels;
    let low = 10f32.powf(-db.abs() / 20.0);
    let mut joined: Vec<(usize, usize)> = Vec::new();
    let mut sorted = regions.to_vec();
    sorted.sort_unstable();
    for (s, e) in sorted {
        match joined.last_mut() {
            Some(last) if s <= last.1 + 2 * fade => last.1 = last.1.max(e),
            _ => joined.push((s, e)),
        }
    }
    let gain_at = |f: usize, (s, e): (usize, usize)| -> f32 {
        let t = if f < s {
            (s - f) as f32 / fade.max(1) as f32
        } else if f >= e {
            (f + 1 - e) as f32 / fade.max(1) as f32
        } else {
            0.0
        };
        low + (1.0 - low) * t.min(1.0)
    };
    for &(s, e) in &joined {
        let from = s.saturating_sub(fade);
        let to = (e + fade).min(frames);
        for f in from..to {
            let g = gain_at(f, (s, e));
            for x in &mut audio[f * channels..(f + 1) * channels] {
                *x *= g;
            }
        }
    }
}

/// Adds mono `speech` into interleaved `track` at frame `at`, on every channel.
pub fn add(track: &mut [f32], channels: usize, at: usize, speech: &[f32]) {
    let channels = channels.max(1);
    for (i, &s) in speech.iter().enumerate() {
        let f = at + i;
        let Some(frame) = track.get_mut(f * channels..(f + 1) * channels) else {
            break;
        };
        for x in frame {
            *x += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_the_sound_and_a_margin() {
        let mut s = vec![0.0; 1000];
        s[300..400].fill(0.5);
        let t = trim(&s, 1000);
        assert_eq!(t.len(), 100 + 2 * 10);
        assert!(trim(&[0.0; 50], 1000).is_empty());
        assert_eq!(trim(&[0.5; 5], 1000).len(), 5);
    }

    #[test]
    fn ducking_lowers_by_the_set_decibels_with_fades() {
        let mut audio = vec![1.0f32; 2 * 1000];
        duck(&mut audio, 2, &[(400, 600)], 12.0, 50);
        let g = 10f32.powf(-12.0 / 20.0);
        assert!((audio[2 * 500] - g).abs() < 1e-6);
        assert!((audio[2 * 500 + 1] - g).abs() < 1e-6);
        assert_eq!(audio[2 * 300], 1.0);
        assert_eq!(audio[2 * 700], 1.0);
        // Half way through each fade, half way between the levels.
        assert!((audio[2 * 375] - (g + (1.0 - g) * 0.5)).abs() < 1e-6);
        assert!(audio[2 * 360] > audio[2 * 380] && audio[2 * 380] > audio[2 * 399]);
        // Two close regions are one: no bump between them.
        let mut audio = vec![1.0f32; 1000];
        duck(&mut audio, 1, &[(100, 200), (250, 300)], 6.0, 50);
        assert!(audio[225] < 0.6);
    }

    #[test]
    fn speech_is_added_on_every_channel_and_clipped_at_the_end() {
        let mut track = vec![0.0f32; 2 * 4];
        add(&mut track, 2, 2, &[0.5, 0.25, 0.125]);
        assert_eq!(track, [0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.25, 0.25]);
    }
}
