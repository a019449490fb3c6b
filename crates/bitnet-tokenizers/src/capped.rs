//! `string` and `pprint` for chat templates, writing into a bounded buffer.
//!
//! minijinja builds these strings whole and charges their fuel afterwards, so a list repeated
//! lazily (`[s] * 100000000`, which costs no fuel) or nested 100,000 deep (`pprint` indents each
//! level) would allocate gigabytes first. Formatting into a writer that refuses to grow past
//! the output limit stops them at the limit.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use minijinja::{Error, ErrorKind, State, Value};

/// minijinja charges serializers 1/4 fuel per byte (see tojson.rs).
const BYTES_PER_FUEL: u64 = 4;

struct CappedString {
    text: String,
    cap: usize,
    full: bool,
}

impl Write for CappedString {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.text.len().saturating_add(s.len()) > self.cap {
            self.full = true;
            return Err(std::fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

/// Formats with `fmt` (`"{}"` or `"{:#?}"` of the value) into at most `cap` bytes.
fn format_capped(
    state: &State,
    what: &str,
    cap: usize,
    limit_hit: &AtomicBool,
    fmt: impl FnOnce(&mut CappedString) -> std::fmt::Result,
) -> Result<Value, Error> {
    let mut w = CappedString {
        text: String::new(),
        cap,
        full: false,
    };
    if fmt(&mut w).is_err() {
        if w.full {
            limit_hit.store(true, Ordering::Relaxed);
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{what} would exceed {cap} bytes"),
            ));
        }
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{what} failed"),
        ));
    }
    state.consume_fuel(w.text.len() as u64 / BYTES_PER_FUEL)?;
    Ok(Value::from(w.text))
}

/// The `string` filter: strings unchanged, anything else as minijinja displays it.
pub(crate) fn string(
    state: &State,
    value: &Value,
    cap: usize,
    limit_hit: &AtomicBool,
) -> Result<Value, Error> {
    if value.as_str().is_some() {
        return Ok(value.clone());
    }
    format_capped(state, "string", cap, limit_hit, |w| write!(w, "{value}"))
}

/// The `pprint` filter: minijinja's pretty debug form.
pub(crate) fn pprint(
    state: &State,
    value: &Value,
    cap: usize,
    limit_hit: &AtomicBool,
) -> Result<Value, Error> {
    format_capped(state, "pprint", cap, limit_hit, |w| write!(w, "{value:#?}"))
}
