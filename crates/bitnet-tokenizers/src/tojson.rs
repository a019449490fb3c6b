//! The `tojson` filter of chat templates, as transformers defines it: `json.dumps(x,
//! ensure_ascii=False, indent=indent, sort_keys=sort_keys)`, i.e. Python separators (`", "`,
//! `": "`) and no HTML escaping (minijinja's built-in escapes `<`, `>`, `&`, `'`).
//!
//! Templates are untrusted, so the output is built against a size limit checked before every
//! write (an `indent` of 2^63 or 10^9 must fail, not allocate) and nesting is bounded (a value
//! nested 100,000 deep must not overflow the stack).

use std::sync::atomic::{AtomicBool, Ordering};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};

/// Deepest nesting serialized; serde_json's parser stops at the same depth.
const MAX_DEPTH: usize = 128;

/// minijinja charges its own serializers 16 units (1/4 fuel) per output byte: walking a value
/// costs more than copying bytes.
const FUEL_PER_4_BYTES: u64 = 1;

/// The filter. `max_bytes` bounds the result; going past it or past [`MAX_DEPTH`] sets
/// `limit_hit`, so the caller reports a template over its limits rather than a template bug.
pub(crate) fn filter(
    state: &State,
    value: &Value,
    indent: Option<usize>,
    kwargs: Kwargs,
    max_bytes: usize,
    limit_hit: &AtomicBool,
) -> Result<Value, Error> {
    let indent = match kwargs.get::<Option<usize>>("indent")? {
        Some(i) => Some(i),
        None => indent,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    // Accepted for compatibility; Python's default separators are what we emit.
    let _ = kwargs.get::<Option<Value>>("separators")?;
    let _ = kwargs.get::<Option<bool>>("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut w = JsonWriter {
        out: String::new(),
        indent,
        sort_keys,
        max_bytes,
    };
    match w.value(value, 0) {
        Ok(()) => {}
        Err(Fail::Limit(msg)) => {
            limit_hit.store(true, Ordering::Relaxed);
            return Err(Error::new(ErrorKind::InvalidOperation, msg));
        }
        Err(Fail::Other(e)) => return Err(e),
    }
    state.consume_fuel(w.out.len() as u64 / 4 * FUEL_PER_4_BYTES)?;
    Ok(Value::from(w.out))
}

enum Fail {
    Limit(String),
    Other(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Other(e)
    }
}

struct JsonWriter {
    out: String,
    indent: Option<usize>,
    sort_keys: bool,
    max_bytes: usize,
}

impl JsonWriter {
    /// Refuses to grow the output by `n` more bytes past the limit, before they are allocated.
    fn reserve(&self, n: usize) -> Result<(), Fail> {
        match self.out.len().checked_add(n) {
            Some(total) if total <= self.max_bytes => Ok(()),
            _ => Err(Fail::Limit(format!(
                "tojson output would exceed {} bytes",
                self.max_bytes
            ))),
        }
    }

    fn push(&mut self, s: &str) -> Result<(), Fail> {
        self.reserve(s.len())?;
        self.out.push_str(s);
        Ok(())
    }

    fn newline(&mut self, depth: usize) -> Result<(), Fail> {
        let Some(n) = self.indent else {
            return Ok(());
        };
        let Some(spaces) = n.checked_mul(depth) else {
            return Err(Fail::Limit(format!("tojson indent {n} is too large")));
        };
        self.reserve(spaces.saturating_add(1))?;
        self.out.push('\n');
        self.out.extend(std::iter::repeat_n(' ', spaces));
        Ok(())
    }

    fn string(&mut self, s: &str) -> Result<(), Fail> {
        // The escaped form is at least the text plus quotes: check before building it.
        self.reserve(s.len().saturating_add(2))?;
        self.push(&json_string(s))
    }

    fn value(&mut self, v: &Value, depth: usize) -> Result<(), Fail> {
        if depth > MAX_DEPTH {
            return Err(Fail::Limit(format!(
                "tojson of a value nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let item_sep = if self.indent.is_some() { "," } else { ", " };
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => self.push("null"),
            ValueKind::Bool => self.push(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.push(&v.to_string()),
            ValueKind::String => self.string(v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let mut items = v.try_iter()?.peekable();
                if items.peek().is_none() {
                    return self.push("[]");
                }
                self.push("[")?;
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        self.push(item_sep)?;
                    }
                    self.newline(depth + 1)?;
                    self.value(&item, depth + 1)?;
                }
                self.newline(depth)?;
                self.push("]")
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                if keys.is_empty() {
                    return self.push("{}");
                }
                self.push("{")?;
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        self.push(item_sep)?;
                    }
                    self.newline(depth + 1)?;
                    self.string(&key.to_string())?;
                    self.push(": ")?;
                    self.value(&v.get_item(key)?, depth + 1)?;
                }
                self.newline(depth)?;
                self.push("}")
            }
            _ => Err(Fail::Other(Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot serialize {} to JSON", v.kind()),
            ))),
        }
    }
}

fn json_string(s: &str) -> String {
    // serde_json escapes what Python's json.dumps(ensure_ascii=False) escapes:
    // quote, backslash, \b \f \n \r \t, other controls as \u00xx, nothing else.
    // Serializing a str cannot fail; the fallback only avoids an unwrap.
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}
