//! Audio input as a user meets it: real files in every supported format, raw PCM from a pipe,
//! and every kind of bad input, each with the message a user would read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use remotemedia_audio::decode::{
    DecodeError, Decoded, FileDecoder, PcmReader, TimedFrame, collect, read_all,
};
use remotemedia_audio::format::SampleFormat;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rm-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Frequency from rising zero crossings and RMS level, over the middle 80% of the signal so
/// codec start-up and tail effects do not count.
fn tone(samples: &[f32], rate: u32) -> (f64, f64) {
    let skip = samples.len() / 10;
    let mid = &samples[skip..samples.len() - skip];
    let crossings: Vec<usize> = mid
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, _)| i)
        .collect();
    let periods = (crossings.len() - 1) as f64;
    let span = (crossings[crossings.len() - 1] - crossings[0]) as f64 / f64::from(rate);
    let rms = (mid
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / mid.len() as f64)
        .sqrt();
    (periods / span, rms)
}

/// Checks one channel holds a sine of `hz` at amplitude 0.5 (RMS 0.354).
fn assert_sine(d: &Decoded, channel: usize, hz: f64, what: &str) {
    let (freq, rms) = tone(&d.channel(channel), d.sample_rate);
    assert!(
        (freq - hz).abs() < hz * 0.01,
        "{what} ch{channel}: {freq:.1} Hz, expected {hz}"
    );
    assert!(
        (rms - 0.3536).abs() < 0.03,
        "{what} ch{channel}: RMS {rms:.3}, expected 0.354"
    );
}

/// Decodes with the streaming reader and checks the framing on the way.
fn decode_streaming(name: &str, frame_ms: u32) -> Decoded {
    let dec = FileDecoder::open(&data(name), frame_ms).unwrap();
    let info = dec.info().clone();
    let frames: Vec<TimedFrame> = dec.map(Result::unwrap).collect();
    assert_contiguous(&frames, frame_ms);
    let d = collect(frames.into_iter().map(Ok)).unwrap();
    assert_eq!(
        (d.sample_rate, d.channels),
        (info.sample_rate, info.channels)
    );
    d
}

/// Every frame starts where the previous one ended, and all but the last are full length.
fn assert_contiguous(frames: &[TimedFrame], frame_ms: u32) {
    let rate = frames[0].1.sample_rate;
    let full = (u64::from(rate) * u64::from(frame_ms) / 1000) as usize;
    let mut at = 0u64;
    for (i, (ts, f)) in frames.iter().enumerate() {
        let expected =
            Duration::from_nanos((u128::from(at) * 1_000_000_000 / u128::from(rate)) as u64);
        assert_eq!(*ts, expected, "frame {i} timestamp");
        if i + 1 < frames.len() {
            assert_eq!(f.frames(), full, "frame {i} length");
        } else {
            assert!(f.frames() <= full && f.frames() > 0);
        }
        at += f.frames() as u64;
    }
}

#[test]
fn wav_mono_decodes_exactly() {
    let d = decode_streaming("tone_440_22050_mono.wav", 20);
    assert_eq!(
        (d.sample_rate, d.channels, d.samples.len()),
        (22_050, 1, 11_025)
    );
    assert_eq!(d.duration(), Duration::from_millis(500));
    assert_sine(&d, 0, 440.0, "wav");
}

#[test]
fn flac_stereo_keeps_channel_order() {
    let d = decode_streaming("tone_440_660_44100_stereo.flac", 20);
    assert_eq!((d.sample_rate, d.channels), (44_100, 2));
    assert_eq!(d.samples.len(), 2 * 22_050);
    // Left is 440 Hz, right 660 Hz: a swapped or de-interleaved stream would show here.
    assert_sine(&d, 0, 440.0, "flac");
    assert_sine(&d, 1, 660.0, "flac");
    // Lossless 16-bit: every sample is an exact step of 1/32768, and the peak is the 0.5 made.
    assert!(d.samples.iter().all(|s| (s * 32_768.0).fract() == 0.0));
    let peak = d.samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!((peak - 0.5).abs() < 0.001, "{peak}");
}

/// MP3 and Vorbis pad to whole codec frames; gapless trimming should remove it, and the
/// tolerance allows one codec frame either way.
fn assert_lossy(name: &str, rate: u32, channels: u16, codec_frame: usize, hz: &[f64]) {
    let d = decode_streaming(name, 20);
    assert_eq!((d.sample_rate, d.channels), (rate, channels), "{name}");
    let frames = d.samples.len() / usize::from(channels);
    let expected = rate as usize / 2;
    assert!(
        frames.abs_diff(expected) <= codec_frame,
        "{name}: {frames} sample frames, expected {expected} ± {codec_frame}"
    );
    for (ch, &f) in hz.iter().enumerate() {
        assert_sine(&d, ch, f, name);
    }
}

#[test]
fn mp3_stereo_44100() {
    assert_lossy(
        "tone_440_660_44100_stereo.mp3",
        44_100,
        2,
        1152,
        &[440.0, 660.0],
    );
}

#[test]
fn mp3_mono_22050() {
    assert_lossy("tone_440_22050_mono.mp3", 22_050, 1, 576, &[440.0]);
}

#[test]
fn ogg_vorbis_mono_22050() {
    assert_lossy("tone_440_22050_mono.ogg", 22_050, 1, 2048, &[440.0]);
}

#[test]
fn ogg_vorbis_stereo_48000_with_oga_extension() {
    assert_lossy(
        "tone_440_660_48000_stereo.oga",
        48_000,
        2,
        2048,
        &[440.0, 660.0],
    );
}

#[test]
fn info_states_rate_channels_and_duration_before_reading() {
    for (name, rate, ch) in [
        ("tone_440_22050_mono.wav", 22_050, 1),
        ("tone_440_660_44100_stereo.flac", 44_100, 2),
        ("tone_440_660_44100_stereo.mp3", 44_100, 2),
        ("tone_440_22050_mono.ogg", 22_050, 1),
    ] {
        let dec = FileDecoder::open(&data(name), 20).unwrap();
        let info = dec.info();
        assert_eq!((info.sample_rate, info.channels), (rate, ch), "{name}");
        let dur = info.duration.unwrap();
        assert!(
            dur.abs_diff(Duration::from_millis(500)) < Duration::from_millis(30),
            "{name}: {dur:?}"
        );
    }
}

#[test]
fn format_is_found_by_content_not_extension() {
    let wrong = temp("really_flac.mp3");
    std::fs::copy(data("tone_440_660_44100_stereo.flac"), &wrong).unwrap();
    let d = read_all(&wrong).unwrap();
    assert_eq!(
        (d.sample_rate, d.channels, d.samples.len()),
        (44_100, 2, 44_100)
    );
}

#[test]
fn odd_frame_lengths_leave_a_short_last_frame() {
    // 11025 samples in 30 ms frames (661 each): 16 full frames and 449 left over.
    let frames: Vec<TimedFrame> = FileDecoder::open(&data("tone_440_22050_mono.wav"), 30)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_contiguous(&frames, 30);
    assert_eq!(frames.len(), 17);
    assert_eq!(frames[16].1.frames(), 11_025 - 16 * 661);
}

#[test]
fn wav_in_other_sample_formats_and_many_channels() {
    // 24-bit integer, 6 channels at 96 kHz: each channel a distinct constant.
    let path = temp("six.wav");
    let spec = hound::WavSpec {
        channels: 6,
        sample_rate: 96_000,
        bits_per_sample: 24,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for _ in 0..960 {
        for ch in 0..6i32 {
            w.write_sample((ch - 3) * (1 << 20)).unwrap();
        }
    }
    w.finalize().unwrap();
    let d = read_all(&path).unwrap();
    assert_eq!(
        (d.sample_rate, d.channels, d.samples.len()),
        (96_000, 6, 5760)
    );
    for ch in 0..6 {
        let expected = (ch as f32 - 3.0) / 8.0;
        assert!(
            d.channel(ch).iter().all(|&s| (s - expected).abs() < 1e-6),
            "ch{ch}"
        );
    }

    // 32-bit float passes through unchanged.
    let path = temp("float.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let values: Vec<f32> = (0..800).map(|i| (i as f32 / 800.0) - 0.5).collect();
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for &v in &values {
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
    assert_eq!(read_all(&path).unwrap().samples, values);
}

fn pcm(
    bytes: Vec<u8>,
    format: SampleFormat,
    rate: u32,
    channels: u16,
) -> PcmReader<std::io::Cursor<Vec<u8>>> {
    PcmReader::new(
        std::io::Cursor::new(bytes),
        "stdin",
        format,
        rate,
        channels,
        20,
    )
    .unwrap()
}

#[test]
fn pcm_s16le_decodes_exactly() {
    let values: Vec<i16> = (0..1000)
        .map(|i| ((i * 131) % 65_536 - 32_768) as i16)
        .collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let frames: Vec<TimedFrame> = pcm(bytes, SampleFormat::I16, 8_000, 2)
        .map(Result::unwrap)
        .collect();
    // 500 stereo sample frames in 20 ms (160-frame) chunks: 3 full and one of 20.
    assert_contiguous(&frames, 20);
    assert_eq!(frames.len(), 4);
    let d = collect(frames.into_iter().map(Ok)).unwrap();
    let expected: Vec<f32> = values.iter().map(|&v| f32::from(v) / 32_768.0).collect();
    assert_eq!(d.samples, expected);
    assert_eq!((d.sample_rate, d.channels), (8_000, 2));
    assert!(d.samples.contains(&-1.0));
}

#[test]
fn pcm_f32le_and_s32le_decode_exactly() {
    let values: Vec<f32> = (0..480).map(|i| ((i as f32) * 0.37).sin() * 0.9).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let d = collect(pcm(bytes, SampleFormat::F32, 48_000, 1)).unwrap();
    assert_eq!(d.samples, values);

    let ints = [i32::MIN, -1 << 30, 0, 1 << 30, i32::MAX];
    let bytes: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
    let d = collect(pcm(bytes, SampleFormat::I32, 16_000, 1)).unwrap();
    assert_eq!(d.samples, [-1.0, -0.5, 0.0, 0.5, 1.0]);
}

/// A pipe delivers bytes in arbitrary pieces, splitting samples; frames must still be whole.
struct Trickle {
    data: Vec<u8>,
    at: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (1 + self.at % 3)
            .min(buf.len())
            .min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn pcm_from_a_trickling_pipe_reassembles_samples() {
    let values: Vec<i16> = (0..3200).map(|i| (i * 7) as i16).collect();
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let reader = PcmReader::new(
        Trickle { data, at: 0 },
        "pipe",
        SampleFormat::I16,
        16_000,
        1,
        20,
    )
    .unwrap();
    let frames: Vec<TimedFrame> = reader.map(Result::unwrap).collect();
    assert_eq!(frames.len(), 10);
    assert_contiguous(&frames, 20);
    let d = collect(frames.into_iter().map(Ok)).unwrap();
    assert_eq!(d.samples[3199], f32::from(values[3199]) / 32_768.0);
}

fn pcm_error(bytes: Vec<u8>, format: SampleFormat, channels: u16) -> String {
    let err = pcm(bytes, format, 16_000, channels)
        .find_map(Result::err)
        .expect("an error");
    err.to_string()
}

#[test]
fn pcm_bad_input_is_named() {
    assert_eq!(
        pcm_error(vec![], SampleFormat::I16, 1),
        "stdin: zero-length audio (the input holds no samples)"
    );
    // Five bytes of stereo s16: one whole sample frame and one stray byte.
    assert_eq!(
        pcm_error(vec![0; 5], SampleFormat::I16, 2),
        "stdin: input ends inside a sample frame (1 stray bytes): check the sample format and channel count"
    );
    let nan: Vec<u8> = [0.0f32, f32::NAN]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(
        pcm_error(nan, SampleFormat::F32, 1),
        "stdin: sample 1 is not a finite number: is the input really f32le?"
    );
    let new = |rate, ch, ms| {
        PcmReader::new(std::io::empty(), "stdin", SampleFormat::I16, rate, ch, ms)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        new(0, 1, 20),
        "stdin: sample rate 0 Hz is outside the supported 1..=384000 Hz"
    );
    assert_eq!(
        new(1_000_000, 1, 20),
        "stdin: sample rate 1000000 Hz is outside the supported 1..=384000 Hz"
    );
    assert_eq!(
        new(16_000, 0, 20),
        "stdin: 0 channels is outside the supported 1..=64"
    );
    assert_eq!(
        new(16_000, 65, 20),
        "stdin: 65 channels is outside the supported 1..=64"
    );
    assert_eq!(
        new(16_000, 1, 0),
        "frame length 0 ms is outside 1..=10000 ms"
    );
}

fn open_error(path: &Path) -> DecodeError {
    FileDecoder::open(path, 20).expect_err("open should fail")
}

#[test]
fn bad_files_give_clear_errors() {
    let msg = |name: &str| open_error(&data(name)).to_string();
    let p = |name: &str| data(name).display().to_string();
    assert_eq!(
        msg("not_audio.mp3"),
        format!(
            "{}: not a supported audio format (no suitable format reader found); supported: WAV (PCM or float), FLAC, MP3, Ogg Vorbis",
            p("not_audio.mp3")
        )
    );
    assert_eq!(
        msg("corrupt.flac"),
        format!(
            "{}: corrupt audio data: the file ends unexpectedly (truncated or not what its header says)",
            p("corrupt.flac")
        )
    );
    assert_eq!(
        msg("garbage_frames.flac"),
        format!(
            "{}: corrupt audio data: no audio could be decoded from it",
            p("garbage_frames.flac")
        )
    );
    for empty in ["empty.wav", "no_samples.wav"] {
        assert_eq!(
            msg(empty),
            format!(
                "{}: zero-length audio (the input holds no samples)",
                p(empty)
            )
        );
    }
    let missing = open_error(&data("missing.wav")).to_string();
    assert!(missing.starts_with(&p("missing.wav")), "{missing}");
    assert!(missing.contains("No such file"), "{missing}");
}

#[test]
fn a_truncated_file_yields_what_it_holds() {
    // The first 6000 bytes hold 4096 of the 22050 sample frames; a warning is logged.
    let d = read_all(&data("truncated.flac")).unwrap();
    assert_eq!((d.sample_rate, d.channels), (44_100, 2));
    assert_eq!(d.samples.len(), 2 * 4096);
}

/// A PCM WAV header claiming `rate` and `channels`, with `frames` silent sample frames.
fn wav_bytes(rate: u32, channels: u16, frames: u32) -> Vec<u8> {
    let block = u32::from(channels) * 2;
    let data = frames * block;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate.wrapping_mul(block)).to_le_bytes());
    b.extend_from_slice(&(block as u16).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data.to_le_bytes());
    b.resize(b.len() + data as usize, 0);
    b
}

#[test]
fn absurd_rates_and_channel_counts_are_refused() {
    let check = |name: &str, rate, ch, expected: &str| {
        let path = temp(name);
        std::fs::write(&path, wav_bytes(rate, ch, 100)).unwrap();
        let msg = open_error(&path).to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains(expected), "{name}: {msg}");
    };
    check(
        "fast.wav",
        2_000_000,
        1,
        "sample rate 2000000 Hz is outside the supported 1..=384000 Hz",
    );
    check("still.wav", 0, 1, "sample rate 0 Hz is outside");
    // WAV itself cannot name more than a few dozen channel positions; the reader says so.
    check(
        "many.wav",
        16_000,
        100,
        "corrupt audio data: invalid channel count",
    );
    // A sane header still decodes, so the two above failed for the stated reason.
    let ok = temp("ok.wav");
    std::fs::write(&ok, wav_bytes(16_000, 2, 100)).unwrap();
    assert_eq!(read_all(&ok).unwrap().samples.len(), 200);
}

#[test]
fn a_format_change_mid_stream_is_an_error_after_the_good_part() {
    // Two Ogg files back to back form one chained stream: 22.05 kHz mono, then 48 kHz stereo.
    let path = temp("chained.ogg");
    let mut bytes = std::fs::read(data("tone_440_22050_mono.ogg")).unwrap();
    bytes.extend(std::fs::read(data("tone_440_660_48000_stereo.oga")).unwrap());
    std::fs::write(&path, bytes).unwrap();
    let items: Vec<Result<TimedFrame, DecodeError>> =
        FileDecoder::open(&path, 20).unwrap().collect();
    let (ok, err): (Vec<_>, Vec<_>) = items.into_iter().partition(Result::is_ok);
    let samples: usize = ok.iter().map(|f| f.as_ref().unwrap().1.frames()).sum();
    assert_eq!(samples, 11_025);
    assert_eq!(err.len(), 1);
    let msg = err[0].as_ref().unwrap_err().to_string();
    assert!(
        msg.ends_with("chained.ogg: audio format changed mid-stream at 500.000ms: 48000 Hz × 2 ch after 22050 Hz × 1 ch"),
        "{msg}"
    );
}

/// Bytes already in memory decode as the file does (the fuzz target and callers holding an
/// upload use this), and empty bytes are refused as an empty file is.
#[test]
fn bytes_decode_like_the_file() {
    for name in [
        "tone_440_22050_mono.wav",
        "tone_440_660_44100_stereo.flac",
        "tone_440_22050_mono.mp3",
        "tone_440_22050_mono.ogg",
    ] {
        let from_file = decode_streaming(name, 20);
        let bytes = std::fs::read(data(name)).unwrap();
        let decoder = remotemedia_audio::decode::FileDecoder::from_bytes(name, bytes, 20).unwrap();
        let from_bytes = remotemedia_audio::decode::collect(decoder).unwrap();
        assert_eq!(from_bytes.samples, from_file.samples, "{name}");
        assert_eq!(
            (from_bytes.sample_rate, from_bytes.channels),
            (from_file.sample_rate, from_file.channels)
        );
    }
    let empty = remotemedia_audio::decode::FileDecoder::from_bytes("upload", Vec::new(), 20);
    assert!(matches!(
        empty,
        Err(remotemedia_audio::decode::DecodeError::Empty { .. })
    ));
}
