//! Panic isolation at per-item boundaries.
//!
//! Third-party decoders can panic on input they do not expect (an `assert!` deep inside a TIFF
//! or JPEG decoder). One such file must become that file's error, never the end of a run, and a
//! panic must never cross a thread pool (rayon aborts the process when one does). Every place
//! that handles one outside item — decoding, preprocessing, a loader's work item, a weights
//! file — runs it through [`isolate`], which turns a panic into a [`Panicked`] value.
//!
//! The default panic hook would still print a backtrace banner for a panic that is caught and
//! reported as an error record; while [`isolate`] runs, the hook stays quiet on that thread.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use thiserror::Error;

/// A panic caught at an item boundary, with its message (first line).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("internal error in {context}: {message}")]
pub struct Panicked {
    /// What was running, e.g. "the image decoder".
    pub context: &'static str,
    pub message: String,
}

thread_local! {
    /// Depth of [`isolate`] calls on this thread: panics inside are reported as errors.
    static ISOLATED: Cell<usize> = const { Cell::new(0) };
}

static QUIET_HOOK: Once = Once::new();

/// Wraps the current panic hook (once per process) so that it stays silent for panics that
/// [`isolate`] catches; others reach the previous hook unchanged.
fn install_quiet_hook() {
    QUIET_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if ISOLATED.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
}

/// The message of a panic payload, on one line.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    crate::error::first_line(msg)
}

/// Runs `f`, turning a panic into [`Panicked`] (with `context` naming what ran).
///
/// State that `f` mutated through captured references may be half-updated after a panic; the
/// callers pass closures that own or only read their inputs.
pub fn isolate<T>(context: &'static str, f: impl FnOnce() -> T) -> Result<T, Panicked> {
    install_quiet_hook();
    ISOLATED.with(|d| d.set(d.get() + 1));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    ISOLATED.with(|d| d.set(d.get() - 1));
    result.map_err(|payload| Panicked { context, message: panic_message(payload.as_ref()) })
}

/// For the binaries: a panic outside any item boundary (a bug) prints one `error:` line, not a
/// backtrace, and the process exits with status 101 as usual.
pub fn install_cli_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!(" (at {l})")).unwrap_or_default();
        eprintln!("error: internal error: {}{location}", panic_message(info.payload()));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_and_values_pass_through() {
        assert_eq!(isolate("test", || 5), Ok(5));
        let err = isolate("the image decoder", || -> u8 { panic!("index out of bounds\nsecond line") }).unwrap_err();
        assert_eq!(err.to_string(), "internal error in the image decoder: index out of bounds");
        let err = isolate("x", || -> () { std::panic::panic_any(17u32) }).unwrap_err();
        assert_eq!(err.message, "unknown panic");
        // Nested use keeps the depth balanced.
        let inner = isolate("outer", || isolate("inner", || -> () { panic!("boom") }));
        assert!(matches!(inner, Ok(Err(Panicked { context: "inner", .. }))));
        assert_eq!(ISOLATED.with(Cell::get), 0);
    }

    #[test]
    fn panics_inside_a_thread_pool_stay_inside_their_item() {
        use rayon::prelude::*;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let out: Vec<Result<u32, Panicked>> = pool.install(|| {
            (0..50u32)
                .into_par_iter()
                .map(|i| isolate("item", move || if i % 7 == 3 { panic!("item {i}") } else { i * 2 }))
                .collect()
        });
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 7);
        assert_eq!(out[4], Ok(8));
        assert_eq!(out[3].as_ref().unwrap_err().message, "item 3");
    }
}
