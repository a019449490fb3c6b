//! Moving data across the boundary: C pointers and lengths in, caller-owned buffers out.
//!
//! Outputs follow one convention (as llama.h's tokenize does, but with the size in an
//! out-parameter): the caller passes a buffer and its capacity; the size needed is always
//! written to the size out-parameter; if the buffer is too small nothing else is written and
//! the call returns `BITNET_ERR_BUFFER_TOO_SMALL`. A NULL buffer with capacity 0 asks for the
//! size only.

use crate::status::{bitnet_status, Error, Result};
use std::ffi::{c_char, CStr};

/// `len` elements at `ptr`; NULL is allowed only for an empty slice.
///
/// # Safety
/// A non-NULL `ptr` must point to `len` readable elements that stay unchanged during the call.
pub unsafe fn slice_in<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Error::null(what));
    }
    check_span::<T>(ptr, len, what)?;
    // SAFETY: non-NULL, aligned and within isize::MAX bytes (checked); readable per contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

fn check_span<T>(ptr: *const T, len: usize, what: &str) -> Result<()> {
    if !ptr.is_aligned() {
        return Err(Error::invalid(format!(
            "{what} is not aligned for its element type"
        )));
    }
    if len
        .checked_mul(size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Error::invalid(format!(
            "{what}: length {len} is impossibly large"
        )));
    }
    Ok(())
}

/// A NUL-terminated UTF-8 string.
///
/// # Safety
/// A non-NULL `ptr` must point to a NUL-terminated string.
pub unsafe fn str_in<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per contract.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map_err(|e| {
        Error::invalid(format!(
            "{what} is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })
}

/// A NUL-terminated file path: any bytes on Unix (paths need not be UTF-8 there), UTF-8
/// elsewhere.
///
/// # Safety
/// As for [`str_in`].
pub unsafe fn path_in(ptr: *const c_char, what: &str) -> Result<std::path::PathBuf> {
    if ptr.is_null() {
        return Err(Error::null(what));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: non-NULL and NUL-terminated per contract.
        let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
        Ok(std::ffi::OsStr::from_bytes(bytes).into())
    }
    #[cfg(not(unix))]
    // SAFETY: forwarded contract.
    Ok(unsafe { str_in(ptr, what)? }.into())
}

/// `len` bytes of UTF-8 text (no terminator needed).
///
/// # Safety
/// As for [`slice_in`].
pub unsafe fn text_in<'a>(ptr: *const c_char, len: usize, what: &str) -> Result<&'a str> {
    // SAFETY: forwarded contract.
    let bytes = unsafe { slice_in(ptr.cast::<u8>(), len, what)? };
    std::str::from_utf8(bytes).map_err(|e| {
        Error::invalid(format!(
            "{what} is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })
}

/// Checks an optional output buffer of `cap` elements before work whose result it will hold
/// (only the pointer's value: nothing is read or written).
pub fn check_out<T>(buf: *mut T, cap: usize, what: &str) -> Result<()> {
    if cap == 0 {
        return Ok(());
    }
    if buf.is_null() {
        return Err(Error::null(what));
    }
    check_span::<T>(buf, cap, what)
}

/// Checks a required out-parameter (non-NULL, aligned) before anything is made for it: a
/// handle registered and then not deliverable would be an object nobody can free.
pub fn check_out_ptr<T>(out: *mut T, what: &str) -> Result<()> {
    if out.is_null() {
        return Err(Error::null(what));
    }
    if !out.is_aligned() {
        return Err(Error::invalid(format!("{what} is not aligned")));
    }
    Ok(())
}

/// Writes one value to a required out-parameter.
///
/// # Safety
/// A non-NULL `out` must be valid for writing a `T`.
pub unsafe fn write_out<T>(out: *mut T, value: T, what: &str) -> Result<()> {
    check_out_ptr(out, what)?;
    // SAFETY: non-NULL, aligned, writable per contract.
    unsafe { out.write(value) };
    Ok(())
}

/// Copies `src` into the caller's buffer under the convention above.
///
/// # Safety
/// `buf` must be valid for `cap` writes (or NULL with `cap` 0); `n_out` as for [`write_out`].
pub unsafe fn copy_out<T: Copy>(
    src: &[T],
    buf: *mut T,
    cap: usize,
    n_out: *mut usize,
    what: &str,
) -> Result<()> {
    // The buffer is checked before the size is written: on any failure but "too small" the
    // out-parameters stay as they were (the header's promise).
    let fits = cap >= src.len();
    if fits && !src.is_empty() {
        if buf.is_null() {
            return Err(Error::null(what));
        }
        check_span::<T>(buf, cap, what)?;
    }
    // SAFETY: forwarded contract.
    unsafe { write_out(n_out, src.len(), "the size out-parameter")? };
    if !fits {
        return Err(too_small(what, src.len(), cap));
    }
    if src.is_empty() {
        return Ok(());
    }
    // SAFETY: `buf` holds at least `src.len()` elements (cap >= len) and cannot overlap a
    // slice the library owns.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf, src.len()) };
    Ok(())
}

/// Copies text and a terminating NUL: the buffer needs `len + 1` bytes, `*n_bytes` gets `len`.
///
/// # Safety
/// As for [`copy_out`].
pub unsafe fn copy_text_out(
    text: &str,
    buf: *mut c_char,
    cap: usize,
    n_bytes: *mut usize,
    what: &str,
) -> Result<()> {
    let need = text.len() + 1;
    // As in copy_out: the buffer first, so that a failure leaves `*n_bytes` alone.
    if cap >= need && buf.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: forwarded contract.
    unsafe { write_out(n_bytes, text.len(), "the size out-parameter")? };
    if cap < need {
        return Err(too_small(what, need, cap));
    }
    let buf = buf.cast::<u8>();
    // SAFETY: `buf` holds `cap >= text.len() + 1` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf, text.len());
        buf.add(text.len()).write(0);
    }
    Ok(())
}

fn too_small(what: &str, need: usize, cap: usize) -> Error {
    Error::new(
        bitnet_status::BITNET_ERR_BUFFER_TOO_SMALL,
        format!("{what} holds {cap} but {need} are needed"),
    )
}
