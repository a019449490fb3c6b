//! bitnet-rs patch: a per-thread budget on the bytes that formatting values may produce.
//!
//! Upstream minijinja 3.1.0 charges fuel for a formatted value only after the string exists.
//! Repeating a sequence is lazy (`[s] * 100000000` costs no fuel) and can be nested
//! (`[[s] * 100000000] * 100000000`), so `~`, `join`, `format` or `string` on such a value builds
//! a string of up to 10^16 items before any limit applies: out-of-memory aborts and minute-long
//! stalls from a hostile template. With a budget set, every string and every container item that
//! `Display`/`Debug` of a [`Value`](crate::Value) writes is charged against it; once it is
//! spent, containers render as `...` without iterating further and [`exhausted`] reports it, so
//! the caller fails the render. Without a budget (the default) nothing changes.

use std::cell::Cell;

thread_local! {
    static REMAINING: Cell<Option<u64>> = const { Cell::new(None) };
    static EXHAUSTED: Cell<bool> = const { Cell::new(false) };
}

/// What one container item costs besides its text (separators, quotes).
pub(crate) const ITEM_COST: u64 = 4;

/// Sets (or with `None` removes) this thread's budget and clears [`exhausted`].
pub fn set(bytes: Option<u64>) {
    REMAINING.with(|r| r.set(bytes));
    EXHAUSTED.with(|e| e.set(false));
}

/// Whether formatting on this thread has run past its budget since [`set`].
pub fn exhausted() -> bool {
    EXHAUSTED.with(|e| e.get())
}

/// Charges `bytes`; `false` once the budget is spent (the caller then writes no more).
pub(crate) fn charge(bytes: u64) -> bool {
    REMAINING.with(|r| match r.get() {
        None => true,
        Some(left) if bytes <= left => {
            r.set(Some(left - bytes));
            true
        }
        Some(_) => {
            r.set(Some(0));
            EXHAUSTED.with(|e| e.set(true));
            false
        }
    })
}
