//! libespeak-ng, loaded at run time: text to IPA phonemes for Piper, and espeak-ng's own
//! synthesis for [`crate::espeak_tts`].
//!
//! The library is opened with `libloading` on first use rather than linked, so building the
//! workspace never needs the C library or its headers; a machine without it gets an error that
//! names the packages to install. The FFI surface is the handful of functions we call, declared
//! here by hand.
//!
//! espeak-ng keeps global state (current voice, parameters, a text decoder that reads ahead, the
//! synthesis callback), so every call goes through one process-wide mutex. Phonemising a
//! sentence takes about a millisecond, so streams barely wait on each other.
//!
//! Some of that state no call resets: the pitch "flutter" of espeak-ng 1.51 advances in a static
//! variable, so the same text never sounds exactly the same twice in one process. Where the
//! same text must give the same samples (a dubbing job, whose track must not depend on what was
//! spoken before), [`PrivateEspeak`] loads a fresh copy of the library of its own.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_short, c_uint, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use libloading::Library;

/// The shared object we open; the `.so.1` name is what the runtime package installs (the bare
/// `.so` only comes with the -dev package).
pub const LIBRARY: &str = "libespeak-ng.so.1";
/// How to get the library, quoted in every error about it.
pub const INSTALL_HINT: &str =
    "apt-get install espeak-ng-data libespeak-ng1 (or run ./scripts/setup-system.sh)";

/// Why espeak-ng could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EspeakError {
    #[error("espeak-ng is not installed: {INSTALL_HINT} ({reason})")]
    NotInstalled { reason: String },
    #[error("espeak-ng could not start (is espeak-ng-data installed? {INSTALL_HINT})")]
    Initialize,
    #[error("espeak-ng has no voice {0:?} (list them with `espeak-ng --voices`)")]
    UnknownVoice(String),
    #[error("espeak-ng failed: {0}")]
    Failed(String),
}

// The constants below are from espeak-ng's public header `speak_lib.h`.
/// `AUDIO_OUTPUT_SYNCHRONOUS`: `espeak_Synth` returns when all audio has gone to the callback.
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// `espeakINITIALIZE_DONT_EXIT`: report a missing data directory instead of calling `exit()`.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
/// `espeakCHARS_UTF8`.
const CHARS_UTF8: c_int = 1;
/// `espeakPHONEMES_IPA`: phonemes as IPA characters, which is what Piper voices are trained on.
const PHONEMES_IPA: c_int = 0x02;
/// `POS_CHARACTER`.
const POS_CHARACTER: c_int = 1;
/// `espeakRATE` and `espeakPITCH` parameter ids.
const PARAM_RATE: c_int = 1;
const PARAM_PITCH: c_int = 3;
/// `EE_OK`.
const EE_OK: c_int = 0;

type SynthCallback = unsafe extern "C" fn(*mut c_short, c_int, *mut c_void) -> c_int;

/// The entry points we use, with the library that keeps them valid.
struct Api {
    initialize: unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int,
    set_voice_by_name: unsafe extern "C" fn(*const c_char) -> c_int,
    text_to_phonemes: unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char,
    set_synth_callback: unsafe extern "C" fn(Option<SynthCallback>),
    set_parameter: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int,
    terminate: unsafe extern "C" fn() -> c_int,
    synth: unsafe extern "C" fn(
        *const c_void,
        usize,
        c_uint,
        c_int,
        c_uint,
        c_uint,
        *mut c_uint,
        *mut c_void,
    ) -> c_int,
    /// Never unloaded while the process runs: the function pointers above point into it.
    _library: Library,
}

impl Api {
    fn open() -> Result<Self, EspeakError> {
        Self::open_named(LIBRARY)
    }

    fn open_named(name: &str) -> Result<Self, EspeakError> {
        // libloading keeps the loader's own words ("cannot open shared object file") in the
        // error's source.
        let missing = |e: libloading::Error| EspeakError::NotInstalled {
            reason: match std::error::Error::source(&e) {
                Some(source) => source.to_string(),
                None => e.to_string(),
            },
        };
        // SAFETY: loading libespeak-ng runs no initialisers with preconditions of ours; it is a
        // plain C library.
        let library = unsafe { Library::new(name) }.map_err(missing)?;
        // SAFETY: each symbol is looked up with the signature declared for it in speak_lib.h
        // (espeak-ng 1.49 and later, unchanged since); the pointers are copied out while
        // `library` is kept alive next to them in the same struct.
        unsafe {
            Ok(Self {
                initialize: *library.get(b"espeak_Initialize\0").map_err(missing)?,
                set_voice_by_name: *library.get(b"espeak_SetVoiceByName\0").map_err(missing)?,
                text_to_phonemes: *library.get(b"espeak_TextToPhonemes\0").map_err(missing)?,
                set_synth_callback: *library.get(b"espeak_SetSynthCallback\0").map_err(missing)?,
                set_parameter: *library.get(b"espeak_SetParameter\0").map_err(missing)?,
                terminate: *library.get(b"espeak_Terminate\0").map_err(missing)?,
                synth: *library.get(b"espeak_Synth\0").map_err(missing)?,
                _library: library,
            })
        }
    }
}

/// The initialised library and what it is currently set to.
struct State {
    api: Api,
    sample_rate: u32,
    voice: Option<String>,
}

/// Held around every synthesis: espeak-ng draws breath noise from the C library's `rand()`,
/// whose state is process-wide, so a synthesis that must repeat seeds it and must not be
/// interleaved with another.
static RAND: Mutex<()> = Mutex::new(());

unsafe extern "C" {
    /// The C library's `srand`, which seeds the `rand()` espeak-ng calls.
    fn srand(seed: c_uint);
}

/// The one lock around espeak-ng. A failed load is not cached: installing the packages while a
/// server runs fixes it without a restart.
static ESPEAK: Mutex<Option<State>> = Mutex::new(None);

/// Exclusive use of the initialised library.
pub struct Espeak {
    guard: MutexGuard<'static, Option<State>>,
}

/// One clause of phonemised text: IPA phonemes and the punctuation that ended it, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    pub phonemes: String,
    /// One of `. , ; : ! ?`, as written in the text.
    pub terminator: Option<char>,
}

impl Espeak {
    /// Locks the library, loading and initialising it on first use.
    pub fn lock() -> Result<Self, EspeakError> {
        let mut guard = ESPEAK.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(State::start(Api::open()?)?);
        }
        Ok(Self { guard })
    }

    fn state(&mut self) -> &mut State {
        // `lock` only returns with the slot filled.
        self.guard
            .as_mut()
            .unwrap_or_else(|| unreachable!("espeak-ng state checked in Espeak::lock"))
    }

    /// Rate of the audio [`Espeak::synthesize`] produces (22 050 Hz for the stock voices).
    pub fn sample_rate(&mut self) -> u32 {
        self.state().sample_rate
    }

    /// Selects a voice by name ("en-us", "de", ...), skipping the reload when it is current.
    pub fn set_voice(&mut self, voice: &str) -> Result<(), EspeakError> {
        self.state().set_voice(voice)
    }

    /// IPA phonemes of `text` in the current voice, clause by clause as espeak-ng splits it.
    ///
    /// espeak-ng returns a clause's phonemes without the punctuation that ended it, which Piper
    /// voices need for their prosody (a question rises, a comma pauses). Where the clause ended is
    /// read from how far espeak-ng advanced its text pointer; it reads one character past the
    /// clause, so the search for the punctuation skips that character when more text follows.
    pub fn phonemize(&mut self, text: &str) -> Result<Vec<Clause>, EspeakError> {
        let state = self.state();
        let bytes = c_text(text);
        let base = bytes.as_ptr();
        let end = bytes.len() - 1; // Without the NUL.
        let mut pos: *const c_void = base.cast();
        let mut clauses = Vec::new();
        let mut start = 0usize;
        while !pos.is_null() {
            // SAFETY: `pos` points into `bytes`, a NUL-terminated UTF-8 buffer that outlives the
            // loop; espeak-ng reads up to the NUL and sets `pos` to a later position in it or
            // to null at the end. The returned string is copied before the next call.
            let phonemes = unsafe {
                let p = (state.api.text_to_phonemes)(&mut pos, CHARS_UTF8, PHONEMES_IPA);
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            };
            let next = if pos.is_null() {
                end
            } else {
                // Any pointer it hands back lies inside the buffer; clamp all the same.
                (pos as usize)
                    .saturating_sub(base as usize)
                    .clamp(start, end)
            };
            let read_ahead = usize::from(!pos.is_null());
            let terminator = text
                .get(start..next)
                .and_then(|span| clause_terminator(span, read_ahead));
            if let Some(phonemes) = phonemes.filter(|p| !p.trim().is_empty()) {
                clauses.push(Clause {
                    phonemes: phonemes.trim().to_string(),
                    terminator,
                });
            } else if let (Some(t), Some(last)) = (terminator, clauses.last_mut())
                && last.terminator.is_none()
            {
                // A clause of punctuation only ("!!") still ends the previous one.
                last.terminator = Some(t);
            }
            if next >= end || (next == start && !pos.is_null()) {
                // Done, or no progress (never seen; guards against looping forever).
                break;
            }
            start = next;
        }
        Ok(clauses)
    }

    /// espeak-ng's own speech for `text` in the current voice: mono f32 at
    /// [`Espeak::sample_rate`]. `rate` is in words per minute, `pitch` 0–100.
    pub fn synthesize(
        &mut self,
        text: &str,
        rate: u32,
        pitch: u32,
    ) -> Result<Vec<f32>, EspeakError> {
        self.state().synthesize(text, rate, pitch, None)
    }
}

/// A copy of libespeak-ng of its own, started fresh: the same calls in the same order give the
/// same samples, whatever else the process has spoken. Loading one (a copy of the library file
/// and its start-up) takes a few milliseconds; it is unloaded when dropped.
pub struct PrivateEspeak(State);

impl PrivateEspeak {
    pub fn open() -> Result<Self, EspeakError> {
        // The shared copy tells where the library file is.
        drop(Espeak::lock()?);
        static ORIGINAL: std::sync::OnceLock<Option<std::path::PathBuf>> =
            std::sync::OnceLock::new();
        let original = ORIGINAL
            .get_or_init(loaded_library_path)
            .as_ref()
            .ok_or_else(|| {
                EspeakError::Failed(format!(
                    "{LIBRARY} is loaded but not found in /proc/self/maps"
                ))
            })?;
        static COPIES: AtomicUsize = AtomicUsize::new(0);
        let copy = std::env::temp_dir().join(format!(
            "remotemedia-espeak-{}-{}.so",
            std::process::id(),
            COPIES.fetch_add(1, Ordering::Relaxed)
        ));
        // A new file only the owner can touch (never one planted under that name), since the
        // process runs its code.
        let failed =
            |e: std::io::Error| EspeakError::Failed(format!("copying {}: {e}", original.display()));
        let mut to = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o700)
                .open(&copy)
                .map_err(failed)?
        };
        let copied =
            std::fs::File::open(original).and_then(|mut from| std::io::copy(&mut from, &mut to));
        drop(to);
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&copy);
            return Err(failed(e));
        }
        let api = Api::open_named(&copy.to_string_lossy());
        // Mapped now (or failed): the file itself is no longer needed.
        let _ = std::fs::remove_file(&copy);
        State::start(api?).map(Self)
    }

    pub fn sample_rate(&self) -> u32 {
        self.0.sample_rate
    }

    /// As [`Espeak::set_voice`].
    pub fn set_voice(&mut self, voice: &str) -> Result<(), EspeakError> {
        self.0.set_voice(voice)
    }

    /// As [`Espeak::synthesize`], with the noise espeak-ng draws seeded the same way each
    /// time.
    pub fn synthesize(
        &mut self,
        text: &str,
        rate: u32,
        pitch: u32,
    ) -> Result<Vec<f32>, EspeakError> {
        self.0.synthesize(text, rate, pitch, Some(1))
    }
}

impl Drop for PrivateEspeak {
    fn drop(&mut self) {
        // SAFETY: no call of this copy is running (`&mut self`); after this the copy is unloaded
        // with its `Library` and never called again.
        unsafe { (self.0.api.terminate)() };
    }
}

/// Where the loaded libespeak-ng file is, from the process's memory map.
fn loaded_library_path() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libespeak-ng.so") && !p.contains("remotemedia-espeak-"))
        .map(std::path::PathBuf::from)
}

impl State {
    /// Initialises a freshly loaded library.
    fn start(api: Api) -> Result<Self, EspeakError> {
        // SAFETY: arguments as documented: synchronous output, default buffer, default data
        // path (null), and the flag that makes a failure return instead of exiting.
        let rate = unsafe {
            (api.initialize)(
                AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                std::ptr::null(),
                INITIALIZE_DONT_EXIT,
            )
        };
        let Ok(sample_rate @ 1..) = u32::try_from(rate) else {
            return Err(EspeakError::Initialize);
        };
        // SAFETY: `synth_callback` matches `t_espeak_callback` and stays valid for the life
        // of the process; it only touches a thread-local buffer.
        unsafe { (api.set_synth_callback)(Some(synth_callback)) };
        Ok(Self {
            api,
            sample_rate,
            voice: None,
        })
    }

    fn set_voice(&mut self, voice: &str) -> Result<(), EspeakError> {
        if self.voice.as_deref() == Some(voice) {
            return Ok(());
        }
        let name = CString::new(voice).map_err(|_| EspeakError::UnknownVoice(voice.to_string()))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let rc = unsafe { (self.api.set_voice_by_name)(name.as_ptr()) };
        if rc != EE_OK {
            self.voice = None;
            return Err(EspeakError::UnknownVoice(voice.to_string()));
        }
        self.voice = Some(voice.to_string());
        Ok(())
    }

    /// Speaks `text`; with a `seed`, the C library's `rand()` (espeak-ng's breath noise) is
    /// seeded with it first, so the same call gives the same samples.
    fn synthesize(
        &mut self,
        text: &str,
        rate: u32,
        pitch: u32,
        seed: Option<c_uint>,
    ) -> Result<Vec<f32>, EspeakError> {
        let _rand = RAND.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(seed) = seed {
            // SAFETY: `srand` only sets the C library's generator state; the lock keeps other
            // syntheses from drawing from it until this one is done.
            unsafe { srand(seed) };
        }
        let bytes = c_text(text);
        let to_int = |v: u32| c_int::try_from(v).unwrap_or(c_int::MAX);
        // SAFETY: plain integer parameters; out-of-range values are clamped by espeak-ng.
        unsafe {
            (self.api.set_parameter)(PARAM_RATE, to_int(rate), 0);
            (self.api.set_parameter)(PARAM_PITCH, to_int(pitch), 0);
        }
        SYNTH_BUFFER.with_borrow_mut(|b| b.clear());
        // SAFETY: `bytes` is NUL-terminated and outlives the call; in synchronous mode the call
        // returns only after the last callback, which ran on this thread and wrote to its
        // thread-local buffer. No identifier or user data is requested.
        let rc = unsafe {
            (self.api.synth)(
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                POS_CHARACTER,
                0,
                CHARS_UTF8 as c_uint,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let samples = SYNTH_BUFFER.with_borrow_mut(std::mem::take);
        if rc != EE_OK {
            return Err(EspeakError::Failed(format!("espeak_Synth returned {rc}")));
        }
        Ok(samples
            .into_iter()
            .map(|s| f32::from(s) / 32_768.0)
            .collect())
    }
}

thread_local! {
    /// Where [`synth_callback`] puts samples. Synthesis is synchronous and happens under the
    /// global lock, so the thread that called `espeak_Synth` is the one that reads it back.
    static SYNTH_BUFFER: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
}

/// Receives audio from `espeak_Synth`; returning 0 asks for more.
unsafe extern "C" fn synth_callback(wav: *mut c_short, n: c_int, _events: *mut c_void) -> c_int {
    if wav.is_null() {
        return 0;
    }
    let Ok(n) = usize::try_from(n) else {
        return 0;
    };
    // SAFETY: espeak-ng passes `n` valid samples at `wav`, alive for the duration of the call.
    let samples = unsafe { std::slice::from_raw_parts(wav, n) };
    SYNTH_BUFFER.with_borrow_mut(|b| b.extend_from_slice(samples));
    0
}

/// The text as a C string: interior NULs (which would end it early) become spaces.
fn c_text(text: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = text
        .bytes()
        .map(|b| if b == 0 { b' ' } else { b })
        .collect();
    bytes.push(0);
    bytes
}

/// The clause punctuation at the end of `span` (the text espeak-ng consumed for one clause),
/// ignoring the last `read_ahead` characters, trailing spaces and closing quotes or brackets.
fn clause_terminator(span: &str, read_ahead: usize) -> Option<char> {
    let mut chars = span.chars().rev().skip(read_ahead);
    let c = chars.find(|c| !c.is_whitespace() && !"\"')]}»”’".contains(*c))?;
    match c {
        '.' | ',' | ';' | ':' | '!' | '?' => Some(c),
        '…' => Some('.'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminator_is_found_behind_the_read_ahead() {
        assert_eq!(clause_terminator("Hello world. T", 1), Some('.'));
        assert_eq!(clause_terminator("Sure, I", 1), Some(','));
        assert_eq!(clause_terminator("why? \"n", 1), Some('?'));
        assert_eq!(clause_terminator("a test.", 0), Some('.'));
        assert_eq!(clause_terminator("he said \"stop!\"", 0), Some('!'));
        assert_eq!(clause_terminator("(paren) — d", 1), None);
        assert_eq!(clause_terminator("wait…", 0), Some('.'));
        assert_eq!(clause_terminator("", 1), None);
    }

    #[test]
    fn a_missing_library_names_the_packages() {
        let Err(e) = Api::open_named("libespeak-ng-not-here.so.1") else {
            panic!("opened a library that does not exist");
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "espeak-ng is not installed: apt-get install espeak-ng-data libespeak-ng1 \
                 (or run ./scripts/setup-system.sh) (libespeak-ng-not-here.so.1: cannot open"
            ),
            "{msg}"
        );
    }

    #[test]
    fn nul_bytes_do_not_cut_the_text() {
        assert_eq!(c_text("a\0b"), b"a b\0");
    }
}
