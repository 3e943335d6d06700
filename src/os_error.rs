//! The one classification of OS errors that every layer uses: which failures mean the disk (or
//! the user's quota) is full, so that a writer sees ENOSPC however deep the error arrived.
//!
//! Errors reach pond wrapped by parquet, arrow, object_store and delta-rs, so the question is
//! asked of a whole chain of causes: each `std::io::Error` in it (also one inside a custom
//! `io::Error`, which `source()` skips), and, as a last resort, the text of a layer that kept
//! only a message (`... (os error 28)`).

use std::error::Error;
use std::io;

/// ENOSPC or EDQUOT: no room for the write, on the disk or in the quota of the pond's owner.
pub fn is_out_of_space_code(code: i32) -> bool {
    code == libc::ENOSPC || code == libc::EDQUOT
}

/// True when `error` or any of its causes says the disk or the quota is full.
pub fn is_out_of_space(error: &(dyn Error + 'static)) -> bool {
    let mut cause: Option<&(dyn Error + 'static)> = Some(error);
    // Bounded: a chain that loops (a bug elsewhere) must not hang the caller.
    for _ in 0..64 {
        let Some(e) = cause else { return false };
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.raw_os_error().is_some_and(is_out_of_space_code)
                || matches!(io.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
            {
                return true;
            }
            // A custom io::Error's source() is its inner error's source: look at the inner one.
            if let Some(inner) = io.get_ref() {
                cause = Some(inner);
                continue;
            }
        }
        if code_in_text(&e.to_string()).is_some_and(is_out_of_space_code) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `N` of the last `(os error N)` in an error's text (what `io::Error` displays).
pub(crate) fn code_in_text(text: &str) -> Option<i32> {
    let (_, rest) = text.rsplit_once("(os error ")?;
    let digits = rest.split_once(')')?.0;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota() -> io::Error {
        io::Error::from_raw_os_error(libc::EDQUOT)
    }

    #[test]
    fn a_full_quota_is_out_of_space_like_a_full_disk_however_it_is_wrapped() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_out_of_space(&quota()));
        assert!(is_out_of_space(&io::Error::from(io::ErrorKind::QuotaExceeded)));
        let parquet = parquet::errors::ParquetError::External(Box::new(quota()));
        assert!(is_out_of_space(&parquet));
        let arrow = arrow::error::ArrowError::ExternalError(Box::new(parquet));
        assert!(is_out_of_space(&arrow));
        assert!(is_out_of_space(&arrow::error::ArrowError::IoError("write".into(), quota())));
        assert!(is_out_of_space(&io::Error::other(arrow)));
        // A layer that kept only the text.
        assert!(is_out_of_space(&io::Error::other("writing part-1.parquet: Disk quota exceeded (os error 122)")));
    }

    #[test]
    fn other_failures_are_not_out_of_space() {
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(libc::EACCES)));
        assert!(!is_out_of_space(&io::Error::other("checksum mismatch in chunk 28")));
        assert!(!is_out_of_space(&parquet::errors::ParquetError::General("(os error 5)".into())));
        assert_eq!(code_in_text("x (os error 28) then (os error 5)"), Some(5));
        assert_eq!(code_in_text("(os error abc)"), None);
    }
}
