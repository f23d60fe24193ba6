//! Fitting speech to its slot and placing it on the track.
//!
//! A cue's slot runs from its start to the next cue's start (the last one's to the end of the
//! track). Speech that is longer than its slot is spoken faster, at most `max_speedup` times
//! (Piper's length scale: the pitch stays); what is still too long runs on past the next cue's
//! start, and that cue's speech starts when it ends: two cues never speak at once, a word is
//! never cut, and the delay is taken up by the silence after the next cues. All positions are
//! in samples of the output track.

/// How fast to speak a cue whose speech at natural speed lasts `natural` samples, in a slot of
/// `slot`: 1 when it fits, else just fast enough to fit, at most `max_speedup`. Rounded up to a
/// thousandth, so the same lengths always ask for the same speed.
pub fn speed_for(natural: usize, slot: usize, max_speedup: f32) -> f32 {
    if natural <= slot || max_speedup <= 1.0 {
        return 1.0;
    }
    let needed = if slot == 0 {
        f64::INFINITY
    } else {
        natural as f64 / slot as f64
    };
    let speed = (needed * 1000.0).ceil() / 1000.0;
    speed.min(f64::from(max_speedup)) as f32
}

/// Where a cue's speech went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// First sample of the speech on the track.
    pub at: usize,
    /// How far the speech started after the cue's start (pushed by the one before).
    pub delay: usize,
    /// How far the speech runs past its slot's end (the next cue's start, or the track's end).
    pub overflow: usize,
}

/// A cue to place: its start, the end of its slot and the length of its speech, in samples.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub start: usize,
    pub end: usize,
    pub len: usize,
}

/// Places speech in cue order (slots sorted by start): each at its cue's start, or when the
/// speech before it ends if that is later.
pub fn place(slots: &[Slot]) -> Vec<Placement> {
    let mut free_from = 0;
    slots
        .iter()
        .map(|s| {
            let at = s.start.max(free_from);
            free_from = at + s.len;
            Placement {
                at,
                delay: at - s.start,
                overflow: free_from.saturating_sub(s.end),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_is_one_when_speech_fits_and_capped_when_it_cannot() {
        assert_eq!(speed_for(900, 1000, 1.2), 1.0);
        assert_eq!(speed_for(1100, 1000, 1.2), 1.1);
        assert_eq!(speed_for(1001, 1000, 1.2), 1.001);
        assert_eq!(speed_for(3000, 1000, 1.2), 1.2);
        assert_eq!(speed_for(3000, 0, 1.2), 1.2);
        assert_eq!(speed_for(3000, 1000, 1.0), 1.0);
    }

    #[test]
    fn long_speech_pushes_the_next_cue_and_the_silence_after_takes_it_up() {
        let slots = [
            Slot {
                start: 0,
                end: 100,
                len: 130,
            },
            Slot {
                start: 100,
                end: 300,
                len: 50,
            },
            Slot {
                start: 300,
                end: 400,
                len: 100,
            },
        ];
        let p = place(&slots);
        let at = |at, delay, overflow| Placement {
            at,
            delay,
            overflow,
        };
        assert_eq!(p, [at(0, 0, 30), at(130, 30, 0), at(300, 0, 0)]);
    }
}
