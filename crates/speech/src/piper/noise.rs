//! The noise a Piper voice samples, drawn from a seed instead of ONNX Runtime's generator, so
//! the same sentence with the same settings gives the same samples in any process, on any
//! instance of the model, whatever ran before it.

/// `count` standard normal floats from `seed` (SplitMix64, Box–Muller). A longer table from the
/// same seed starts with the shorter one.
pub(super) fn normal_table(seed: u64, count: usize) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // A uniform in (0, 1]: 53 random bits, never zero (ln(0) is infinite).
    let mut uniform = move || ((next() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let (u, v) = (uniform(), uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let a = std::f64::consts::TAU * v;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(count);
    out
}

/// A seed for one sentence: the caller's seed mixed with the sentence's phoneme ids (FNV-1a),
/// so each sentence gets its own noise and the same sentence always the same.
pub(super) fn sentence_seed(seed: u64, ids: &[i64]) -> u64 {
    ids.iter().fold(seed ^ 0xCBF2_9CE4_8422_2325, |h, &id| {
        (h ^ id as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_standard_normal_and_repeatable() {
        let t = normal_table(7, 100_001);
        assert_eq!(t.len(), 100_001);
        let mean = t.iter().map(|&x| f64::from(x)).sum::<f64>() / t.len() as f64;
        let var = t
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / t.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        assert_eq!(normal_table(7, 10), t[..10]);
        assert_ne!(normal_table(8, 10), t[..10]);
        assert_ne!(sentence_seed(1, &[1, 2]), sentence_seed(1, &[2, 1]));
    }
}
