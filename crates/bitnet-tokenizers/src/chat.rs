//! Chat templates: Hugging Face Jinja templates rendered with minijinja, set up
//! the way transformers sets up its Jinja environment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use minijinja::value::{Kwargs, Serde};
use minijinja::{Environment, Error, ErrorKind, State, Value};

use crate::TokenizerError;
use crate::{capped, tojson};

/// One chat turn, as transformers' `apply_chat_template` takes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What a render may cost. Templates come from model files, so they are untrusted code: fuel
/// (minijinja's budget, charged per instruction and per byte of data a template creates)
/// bounds loops, memory and therefore time; `output` bounds the rendered text, which is also
/// checked as it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub fuel: u64,
    pub output: usize,
    /// The input was large enough for the fuel to hit [`MAX_FUEL`]: running out is then the
    /// input's size, not the template's fault.
    pub fuel_capped: bool,
}

/// Fuel every render gets, whatever its input. A real template (Llama 3, 2B4T, Mistral) spends
/// a few dozen fuel per message; a million runs out in a fraction of a second (tests/hostile.rs
/// exhausts it several times in about a second, loading included) after at most 64 MB of data
/// created.
const BASE_FUEL: u64 = 1_000_000;
/// Fuel per message on top, so long conversations are never refused.
const FUEL_PER_MESSAGE: u64 = 200;
/// Input bytes per extra fuel: fuel is charged at 1/64 per byte of data, so this lets a
/// template copy its input 16 times.
const INPUT_BYTES_PER_FUEL: u64 = 4;
/// Bytes that formatting values may produce per byte of allowed output.
const FORMAT_BUDGET_PER_OUTPUT_BYTE: u64 = 4;

/// Most fuel any render gets: it also sizes the render thread's stack (see `STACK_PER_FUEL`).
const MAX_FUEL: u64 = 4_000_000;
/// Rendered output every template may produce, on top of 4 times its input: real templates add
/// a few dozen bytes of markup per message.
const BASE_OUTPUT: usize = 1 << 20;

/// Stack of the render thread per fuel, on top of `BASE_STACK`. minijinja formats, compares
/// and drops values recursively, so a value nested a million deep (a loop of
/// `{% set ns.x = [ns.x] %}`) overflows any default stack, which aborts the process. Each
/// level costs a template at least 7 fuel and minijinja at most ~400 bytes of stack (`pprint`),
/// so the stack is sized from the fuel. It is reserved, not used, until a template goes deep.
const STACK_PER_FUEL: usize = 96;
const BASE_STACK: usize = 8 << 20;

impl Limits {
    /// The limits a render of `messages` gets: proportional to its input.
    pub(crate) fn for_input(messages: &[ChatMessage], specials: &[Option<&str>]) -> Limits {
        let bytes: usize = messages
            .iter()
            .map(|m| m.role.len().saturating_add(m.content.len()))
            .chain(specials.iter().map(|s| s.map_or(0, str::len)))
            .fold(0, usize::saturating_add);
        let fuel = BASE_FUEL
            .saturating_add(FUEL_PER_MESSAGE.saturating_mul(messages.len() as u64))
            .saturating_add(bytes as u64 / INPUT_BYTES_PER_FUEL);
        Limits {
            fuel: fuel.min(MAX_FUEL),
            fuel_capped: fuel > MAX_FUEL,
            output: BASE_OUTPUT.saturating_add(bytes.saturating_mul(4)),
        }
    }

    fn stack_bytes(&self) -> usize {
        let fuel = usize::try_from(self.fuel).unwrap_or(usize::MAX);
        BASE_STACK.saturating_add(fuel.saturating_mul(STACK_PER_FUEL))
    }
}

/// Why a render failed.
#[derive(Debug)]
pub(crate) enum RenderError {
    /// The template does not compile.
    Syntax(String),
    /// The template ran and failed (`raise_exception`, a type error): it may depend on the
    /// conversation.
    Failed(String),
    /// The template went past its fuel or one of the size limits.
    Limit(String),
    /// The output went past `Limits::output`.
    Output(usize),
    /// The input is too large to render at all (see `Limits::fuel_capped`).
    InputTooLarge(String),
}

impl RenderError {
    pub(crate) fn into_tokenizer_error(self) -> TokenizerError {
        match self {
            RenderError::Syntax(m) | RenderError::Limit(m) => TokenizerError::InvalidTemplate(m),
            RenderError::InputTooLarge(m) => TokenizerError::InputTooLarge(m),
            RenderError::Failed(m) => TokenizerError::Template(m),
            RenderError::Output(n) => TokenizerError::InvalidTemplate(format!(
                "it renders more than {n} bytes, beyond what its input can explain"
            )),
        }
    }
}

/// Renders `template` with the variables transformers passes: `messages`,
/// `bos_token`, `eos_token`, `add_generation_prompt`, under `limits`.
pub(crate) fn render(
    template: &str,
    messages: &[ChatMessage],
    bos_token: Option<&str>,
    eos_token: Option<&str>,
    add_generation_prompt: bool,
    limits: Limits,
) -> Result<String, RenderError> {
    // On a thread of its own, with a stack sized for the deepest value the fuel can build.
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("chat-template".into())
            .stack_size(limits.stack_bytes())
            .spawn_scoped(scope, || {
                render_here(
                    template,
                    messages,
                    bos_token,
                    eos_token,
                    add_generation_prompt,
                    limits,
                )
            })
            .map_err(|e| RenderError::Failed(format!("cannot start a template thread: {e}")))?;
        thread.join().unwrap_or_else(|_| {
            Err(RenderError::Failed(
                "the template engine panicked".to_string(),
            ))
        })
    })
}

fn render_here(
    template: &str,
    messages: &[ChatMessage],
    bos_token: Option<&str>,
    eos_token: Option<&str>,
    add_generation_prompt: bool,
    limits: Limits,
) -> Result<String, RenderError> {
    let limit_hit = Arc::new(AtomicBool::new(false));
    let env = environment(limits, limit_hit.clone());
    let compiled = env
        .template_from_str(template)
        .map_err(|e| RenderError::Syntax(message(&e)))?;
    let ctx = minijinja::context! {
        messages => Value::from(Serde(messages)),
        bos_token => bos_token,
        eos_token => eos_token,
        add_generation_prompt => add_generation_prompt,
    };
    let mut out = CappedOutput {
        buf: Vec::new(),
        cap: limits.output,
        overflow: false,
    };
    // Formatting values into strings (`~`, `join`, `format`, filters) is charged as it goes
    // (third_party/minijinja/PATCHED.md): a lazily repeated list would otherwise be built
    // whole before fuel sees it. Legitimate renders format about their output once.
    let format_budget = (limits.output as u64).saturating_mul(FORMAT_BUDGET_PER_OUTPUT_BYTE);
    minijinja::render_budget::set(Some(format_budget));
    let result = compiled.render_captured_to(ctx, &mut out).map(drop);
    let formatted_too_much = minijinja::render_budget::exhausted();
    minijinja::render_budget::set(None);
    if formatted_too_much {
        return Err(RenderError::Limit(format!(
            "it formats more than {format_budget} bytes of values, beyond what its input can explain"
        )));
    }
    match result {
        Ok(()) => String::from_utf8(out.buf)
            .map_err(|_| RenderError::Failed("the template wrote invalid UTF-8".into())),
        Err(_) if out.overflow => Err(RenderError::Output(limits.output)),
        Err(e) if e.kind() == ErrorKind::OutOfFuel && limits.fuel_capped => {
            Err(RenderError::InputTooLarge(format!(
                "the chat is too large to render within the most fuel a template gets ({})",
                limits.fuel
            )))
        }
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(RenderError::Limit(format!(
            "it needs more than its budget of {} fuel (loops or data too large for its input)",
            limits.fuel
        ))),
        Err(e) if limit_hit.load(Ordering::Relaxed) => Err(RenderError::Limit(message(&e))),
        Err(e) => Err(RenderError::Failed(message(&e))),
    }
}

/// Renders a chat template on its own, under the limits a tokenizer's template gets (see
/// [`Tokenizer::apply_chat_template`](crate::Tokenizer::apply_chat_template)); for tools that
/// check templates without a model, and for fuzzing.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    bos_token: Option<&str>,
    eos_token: Option<&str>,
    add_generation_prompt: bool,
) -> Result<String, TokenizerError> {
    let limits = Limits::for_input(messages, &[bos_token, eos_token]);
    render(
        template,
        messages,
        bos_token,
        eos_token,
        add_generation_prompt,
        limits,
    )
    .map_err(RenderError::into_tokenizer_error)
}

/// Checks a model's template once, when its tokenizer loads, on a one-message conversation: a
/// template that does not compile, or that cannot render even that within the limits, is
/// refused then and never run again. Failures that may depend on the conversation
/// (`raise_exception`) are left for the render that meets them. The error says why.
pub(crate) fn check(
    template: &str,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<(), String> {
    let probe = [ChatMessage::new("user", "Hello")];
    let limits = Limits::for_input(&probe, &[bos_token, eos_token]);
    match render(template, &probe, bos_token, eos_token, true, limits) {
        Ok(_) | Err(RenderError::Failed(_)) => Ok(()),
        Err(e) => Err(match e.into_tokenizer_error() {
            TokenizerError::InvalidTemplate(m) => m,
            other => other.to_string(),
        }),
    }
}

/// The rendered text, refusing to grow past `cap` bytes.
struct CappedOutput {
    buf: Vec<u8>,
    cap: usize,
    overflow: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            self.overflow = true;
            return Err(std::io::Error::other("chat template output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// transformers compiles templates with `trim_blocks=True, lstrip_blocks=True`
/// and the loop-controls extension, adds `raise_exception` and `strftime_now`,
/// and overrides `tojson` to behave like Python's `json.dumps`.
fn environment(limits: Limits, limit_hit: Arc<AtomicBool>) -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build();
    // The builder only fails for custom delimiters, which are not set here.
    if let Ok(syntax) = syntax {
        env.set_syntax(syntax);
    }
    env.set_fuel(Some(limits.fuel));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    // Filters that build strings from values write against the output limit: a string larger
    // than the whole output may be cannot be useful.
    let cap = limits.output;
    let hit = limit_hit.clone();
    env.add_filter(
        "tojson",
        move |state: &State, value: &Value, indent: Option<usize>, kwargs: Kwargs| {
            tojson::filter(state, value, indent, kwargs, cap, &hit)
        },
    );
    let hit = limit_hit.clone();
    env.add_filter("string", move |state: &State, value: &Value| {
        capped::string(state, value, cap, &hit)
    });
    env.add_filter("pprint", move |state: &State, value: &Value| {
        capped::pprint(state, value, cap, &limit_hit)
    });
    env
}

fn message(e: &Error) -> String {
    // Display gives "kind: detail (in template:line)"; make sure the detail
    // (e.g. a raise_exception message) is there even if a version drops it.
    let mut msg = e.to_string();
    if let Some(detail) = e.detail() {
        if !msg.contains(detail) {
            msg = format!("{msg}: {detail}");
        }
    }
    msg
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Current UTC time formatted with a C `strftime` subset (enough for the
/// `%d %b %Y` style dates templates print).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs, &format)
}

pub(crate) fn format_utc(unix_secs: u64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let weekday = DAYS[(days % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // `%-d` (glibc): no zero padding.
        let mut spec = chars.next();
        let pad = spec != Some('-');
        if !pad {
            spec = chars.next();
        }
        let num = |n: u64, width: usize| {
            if pad {
                format!("{n:0width$}")
            } else {
                n.to_string()
            }
        };
        match spec {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year % 100, 2)),
            Some('m') => out.push_str(&num(month, 2)),
            Some('d') => out.push_str(&num(day, 2)),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num((hour + 11) % 12 + 1, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(
        template: &str,
        messages: &[ChatMessage],
        bos: Option<&str>,
        eos: Option<&str>,
        add_generation_prompt: bool,
    ) -> Result<String, RenderError> {
        let limits = Limits::for_input(messages, &[bos, eos]);
        super::render(template, messages, bos, eos, add_generation_prompt, limits)
    }

    #[test]
    fn utc_formatting() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(format_utc(t, "%d %b %Y"), "29 Feb 2024");
        assert_eq!(
            format_utc(t, "%Y-%m-%d %H:%M:%S %A %a %B %-d%%"),
            "2024-02-29 13:05:09 Thursday Thu February 29%"
        );
        assert_eq!(format_utc(0, "%Y-%m-%d"), "1970-01-01");
    }

    #[test]
    fn tojson_is_pythonic() {
        let msgs = [ChatMessage::new("user", "<b>é\n\"")];
        let out = render("{{ messages | tojson }}", &msgs, None, None, false).unwrap_or_default();
        assert_eq!(out, r#"[{"role": "user", "content": "<b>é\n\""}]"#);
        let out = render(
            "{{ {'a': [1, 2]} | tojson(indent=2) }}",
            &msgs,
            None,
            None,
            false,
        )
        .unwrap_or_default();
        assert_eq!(out, "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
    }

    #[test]
    fn python_methods_and_exceptions() {
        let msgs = [
            ChatMessage::new("system", "  hi  "),
            ChatMessage::new("user", "yo"),
        ];
        let t = "{% for m in messages %}{% if loop.first and m.role != 'system' %}{{ raise_exception('no system') }}{% endif %}[{{ m.content.strip() }}|{{ m.role.upper() }}]{% endfor %}";
        assert_eq!(
            render(t, &msgs, None, None, false).ok().as_deref(),
            Some("[hi|SYSTEM][yo|USER]")
        );
        let err = render(t, &msgs[1..], None, None, false)
            .err()
            .map(|e| e.into_tokenizer_error().to_string())
            .unwrap_or_default();
        assert!(err.contains("no system"), "{err}");
    }
}
