//! SIGBUS from a model file that shrinks under its memory map. Weights are read straight from
//! the mapping (`--mmap`, and an untied model's embedding always); if another process truncates
//! or rewrites the file meanwhile, touching a page past the new end raises SIGBUS, which would
//! kill the process with no word of why. This handler says why and exits with code 3 (an
//! unreadable model file). It only calls `write` and `_exit`, both async-signal-safe, on a
//! static message, so it is safe whatever the interrupted thread was doing.

#[cfg(unix)]
extern "C" fn on_sigbus(_: libc::c_int) {
    const MSG: &[u8] = b"\nerror: the model file was truncated or changed while in use (SIGBUS reading its memory map); do not modify a model file while bitnet runs it\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a static buffer.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::_exit(3);
    }
}

/// Installs the handler for the whole process.
pub fn install() {
    #[cfg(unix)]
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler is an
    // `extern "C" fn(c_int)` as `sa_sigaction` expects without SA_SIGINFO.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut());
    }
}
