//! Polyphase FIR resampling for rational rate ratios (48 kHz → 16 kHz is 1/3, 44.1 kHz → 16 kHz
//! is 160/441): the common conversions in speech pipelines, done with one Kaiser-windowed sinc
//! filter bank and a SIMD dot product per output sample.
//!
//! Output sample `n` sits at input time `n·M/L` exactly (the filter's delay is compensated, not
//! trimmed approximately), so resampled audio lines up with the original.

/// The anti-alias filter: band edges as fractions of the lower Nyquist frequency, and the
/// stop-band attenuation in dB.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Design {
    pub pass: f64,
    pub stop: f64,
    pub attenuation_db: f64,
}

/// Streaming rational resampler for interleaved audio.
pub(crate) struct Polyphase {
    l: u64,
    m: u64,
    /// Taps per phase.
    k: usize,
    /// Filter centre in the upsampled domain (its delay).
    centre: u64,
    /// `l` phases × `k` taps, each phase ordered to match ascending input samples.
    bank: Vec<f32>,
    /// Per-channel input; index 0 is shifted input index `base`. The shifted index of input
    /// sample `i` is `i + k - 1`, the `k - 1` leading zeros being the filter's history.
    chans: Vec<Vec<f32>>,
    base: u64,
    /// Shifted index one past the last received sample.
    received: u64,
    next_out: u64,
    /// `position(next_out)`, advanced incrementally (a division per sample is too slow).
    cursor: (u64, usize),
    /// How far the cursor moves per output: `m / l` samples and `m % l` phases.
    step: (u64, usize),
    fused: bool,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Modified Bessel function of the first kind, order 0 (for the Kaiser window).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, mut k) = (1.0, 1.0, 1.0);
    while term > 1e-12 * sum {
        term *= (x / (2.0 * k)) * (x / (2.0 * k));
        sum += term;
        k += 1.0;
    }
    sum
}

impl Polyphase {
    /// The reduced ratio `L/M` of two rates, e.g. (1, 3) for 48 000 → 16 000.
    pub fn ratio(from: u32, to: u32) -> (u64, u64) {
        let g = gcd(u64::from(from), u64::from(to));
        (u64::from(to) / g, u64::from(from) / g)
    }

    pub fn new(from: u32, to: u32, channels: usize, d: Design) -> Self {
        let (l, m) = Self::ratio(from, to);
        // Frequencies in cycles per sample of the upsampled rate (input rate × L).
        let nyquist = 0.5 / l.max(m) as f64;
        let cutoff = 0.5 * (d.pass + d.stop) * nyquist;
        let width = (d.stop - d.pass) * nyquist;
        let a = d.attenuation_db;
        let taps = ((a - 7.95) / (2.285 * std::f64::consts::TAU * width)).ceil() as u64;
        let centre = taps.div_ceil(2);
        let n = 2 * centre + 1;
        // Whole SIMD blocks per phase; the extra taps are zeros.
        let k = (n.div_ceil(l) as usize).next_multiple_of(LANES);
        let beta = if a > 50.0 {
            0.1102 * (a - 8.7)
        } else {
            0.5842 * (a - 21.0).max(0.0).powf(0.4) + 0.07886 * (a - 21.0).max(0.0)
        };
        let norm = bessel_i0(beta);
        let h = |i: u64| -> f64 {
            if i >= n {
                return 0.0;
            }
            let x = i as f64 - centre as f64;
            let r = x / centre as f64;
            let window = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / norm;
            let t = 2.0 * cutoff * x;
            let sinc = if x == 0.0 {
                1.0
            } else {
                (std::f64::consts::PI * t).sin() / (std::f64::consts::PI * t)
            };
            2.0 * cutoff * sinc * window * l as f64
        };
        let mut bank = Vec::with_capacity(l as usize * k);
        for phase in 0..l {
            for j in 0..k as u64 {
                bank.push(h(phase + (k as u64 - 1 - j) * l) as f32);
            }
        }
        let mut p = Self {
            l,
            m,
            k,
            centre,
            bank,
            chans: vec![vec![0.0; k - 1]; channels],
            base: 0,
            received: k as u64 - 1,
            next_out: 0,
            cursor: (0, 0),
            step: (m / l, (m % l) as usize),
            fused: fused_available(),
        };
        p.cursor = p.position(0);
        p
    }

    fn advance(&mut self) {
        self.next_out += 1;
        let (mut i, mut phase) = self.cursor;
        i += self.step.0;
        phase += self.step.1;
        if phase >= self.l as usize {
            phase -= self.l as usize;
            i += 1;
        }
        self.cursor = (i, phase);
    }

    /// Input index (shifted) of the newest sample output `n` needs, and its filter phase.
    fn position(&self, n: u64) -> (u64, usize) {
        let u = n * self.m + self.centre;
        (u / self.l + self.k as u64 - 1, (u % self.l) as usize)
    }

    /// Adds interleaved input and appends every output it completes to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) {
        let ch = self.chans.len();
        if ch == 1 {
            self.chans[0].extend_from_slice(samples);
        } else {
            for (c, buf) in self.chans.iter_mut().enumerate() {
                buf.extend(samples.iter().skip(c).step_by(ch));
            }
        }
        self.received += (samples.len() / ch) as u64;
        if let Some(ready) = self.received.checked_sub(self.cursor.0) {
            out.reserve((ready * self.l / self.m + 1) as usize * ch);
        }
        self.produce(u64::MAX, out);
    }

    /// Ends the stream: pads with silence and emits outputs up to `total` in all.
    pub fn finish(&mut self, total: u64, out: &mut Vec<f32>) {
        if total > self.next_out {
            let (last, _) = self.position(total - 1);
            let missing = (last + 1).saturating_sub(self.received);
            for buf in &mut self.chans {
                buf.resize(buf.len() + missing as usize, 0.0);
            }
            self.received += missing;
            self.produce(total, out);
        }
    }

    fn produce(&mut self, limit: u64, out: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if self.fused {
            // SAFETY: `fused` is only true when the CPU reported AVX2 and FMA.
            unsafe { self.produce_fma(limit, out) };
            return;
        }
        self.produce_with::<false>(limit, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn produce_fma(&mut self, limit: u64, out: &mut Vec<f32>) {
        self.produce_with::<true>(limit, out);
    }

    #[inline(always)]
    fn produce_with<const FMA: bool>(&mut self, limit: u64, out: &mut Vec<f32>) {
        let k = self.k;
        while self.next_out < limit {
            let (newest, phase) = self.cursor;
            if newest >= self.received {
                break;
            }
            let coefs = &self.bank[phase * k..(phase + 1) * k];
            let from = (newest + 1 - k as u64 - self.base) as usize;
            for buf in &self.chans {
                out.push(dot::<FMA>(coefs, &buf[from..from + k]));
            }
            self.advance();
        }
        // Forget input that no future output needs.
        let keep_from = (self.cursor.0 + 1)
            .saturating_sub(k as u64)
            .min(self.received);
        let drop = keep_from.saturating_sub(self.base) as usize;
        if drop > 0 {
            for buf in &mut self.chans {
                buf.drain(..drop);
            }
            self.base += drop as u64;
        }
    }
}

fn fused_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Filter lengths are padded to a multiple of this.
const LANES: usize = 16;

#[inline(always)]
fn mac<const FMA: bool>(acc: &mut [f32; LANES], x: &[f32], y: &[f32]) {
    for j in 0..LANES {
        acc[j] = if FMA {
            x[j].mul_add(y[j], acc[j])
        } else {
            acc[j] + x[j] * y[j]
        };
    }
}

/// Dot product of two slices whose length is a multiple of [`LANES`]; the lanes become SIMD
/// registers (fused multiply-add when built for it).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        mac::<FMA>(&mut acc, x, y);
    }
    // Pairwise, so the lanes add in a few vector steps instead of a 16-long scalar chain.
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            acc[j] += acc[j + width];
        }
        width /= 2;
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN: Design = Design {
        pass: 0.9,
        stop: 1.1,
        attenuation_db: 100.0,
    };

    #[test]
    fn fused_and_plain_dot_products_agree() {
        let a: Vec<f32> = (0..208).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..208).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain = dot::<false>(&a, &b);
        let exact: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!((f64::from(plain) - exact).abs() < 1e-4);
        assert!((dot::<true>(&a, &b) - plain).abs() < 1e-4);
    }

    #[test]
    fn dc_passes_with_unit_gain_in_both_directions() {
        for (from, to) in [(48_000, 16_000), (16_000, 48_000), (44_100, 16_000)] {
            let mut p = Polyphase::new(from, to, 1, DESIGN);
            let mut out = Vec::new();
            p.push(&vec![0.5; from as usize], &mut out);
            let mid = &out[out.len() / 4..out.len() / 2];
            assert!(
                mid.iter().all(|v| (v - 0.5).abs() < 1e-4),
                "{from}->{to}: {:?}",
                &mid[..4]
            );
        }
    }

    #[test]
    fn output_count_is_exact_after_finish() {
        let mut p = Polyphase::new(44_100, 16_000, 2, DESIGN);
        let mut out = Vec::new();
        p.push(&[0.1; 2 * 1000], &mut out);
        p.finish((1000u64 * 16_000).div_ceil(44_100), &mut out);
        assert_eq!(out.len(), 2 * 363);
    }
}
