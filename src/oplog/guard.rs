//! The last line of defence against libraries that panic on damaged bytes.
//!
//! parquet's readers assert and unwrap on some damaged pages (a map column whose levels do not add
//! up: `Failed to reconstruct list from level data`, unwrapped in its map reader) where no cheap
//! check beforehand can tell. Pond validates what it can first (footers, see `datafile`); what
//! remains runs inside [`quietly`], which turns a panic on the calling thread into an error
//! carrying the panic's message, without the panic hook printing it as a crash. Panics on other
//! threads, and everywhere outside `quietly`, go to the previous hook as before.

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::sync::Once;

thread_local! {
    /// Set while this thread runs inside [`quietly`].
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The message of the panic [`quietly`] caught on this thread.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Chain a hook in front of whatever hook is installed, once per process.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                let message = info
                    .payload()
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| info.payload().downcast_ref::<&str>().copied())
                    .unwrap_or("panic");
                CAUGHT.with(|c| *c.borrow_mut() = Some(format!("{message}{location}")));
            } else {
                previous(info)
            }
        }));
    });
}

/// Run `f`; a panic inside it (on this thread) becomes `Err` with the panic's message.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let was_quiet = QUIET.with(|q| q.replace(true));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was_quiet));
    outcome.map_err(|_| CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or_else(|| "panic".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_becomes_an_error_with_its_message() {
        assert_eq!(quietly(|| 7), Ok(7));
        let err = quietly(|| -> u8 { panic!("damaged page") }).unwrap_err();
        assert!(err.starts_with("damaged page at "), "{err}");
        let nested = quietly(|| quietly(|| -> u8 { panic!("inner") }).unwrap_err());
        assert!(nested.is_ok_and(|m| m.starts_with("inner")), "nested guards keep their own panic");
    }
}
