//! Logging: `tracing` with a pretty or JSON formatter, written by a background thread so a
//! request never waits for stderr. `RUST_LOG` overrides the configured level.
//!
//! Nothing is logged at INFO per accepted or duplicate request; rejections are, with the
//! client IP, through a [`LogBudget`] so that a flood of bad requests cannot fill the disk.
//!
//! Every line is one line: control characters in any field (an event type, a sink's error
//! text, anything a sender chose) are written escaped, in both formats ([`escape_line`]), so
//! nobody can forge a log line or send escape sequences to the terminal of whoever reads the
//! log. Colours are used only when stderr is a terminal.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Lines buffered for the log writer thread; beyond that new lines are dropped, not waited for.
const LOG_BUFFER_LINES: usize = 65_536;

/// Installs the global subscriber. Keep the guard for the life of the process: dropping it
/// flushes what is buffered. A second call (tests) is a no-op.
pub fn init(settings: &LogSettings) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(settings.level.as_str()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let ansi = std::io::stderr().is_terminal();
    let style = match settings.format {
        LogFormat::Json => LineStyle::Json,
        LogFormat::Pretty => LineStyle::Text { ansi },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(Escaping {
            inner: writer,
            style,
        });
    let installed = match settings.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    installed.ok().map(|()| guard)
}

/// What a log line is, for escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStyle {
    /// The pretty format; `ansi`: the formatter's own colour codes are kept.
    Text { ansi: bool },
    /// One JSON object per line (serde_json escapes C0 controls already).
    Json,
}

fn is_control(c: char) -> bool {
    c < ' ' || c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c)
}

/// One formatted log line with its control characters escaped ([`escape_controls`]); the
/// final newline stays.
pub fn escape_line(line: &[u8], style: LineStyle) -> Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Cow::Owned(
            String::from_utf8_lossy(line)
                .replace(is_control, "?")
                .into_bytes(),
        );
    };
    let body = text.strip_suffix('\n').unwrap_or(text);
    match escape_controls(body, style) {
        Cow::Borrowed(_) => Cow::Borrowed(line),
        Cow::Owned(mut out) => {
            if body.len() < text.len() {
                out.push('\n');
            }
            Cow::Owned(out.into_bytes())
        }
    }
}

/// `text` with its control characters (C0, DEL, C1) escaped, `\x0a` style. In coloured text
/// ESC stays (tracing-subscriber already escapes it inside field values, and it starts the
/// colour codes). JSON text (serialised by serde_json, which escapes C0 inside strings, so any
/// C0 left is whitespace between tokens) gets DEL and C1 escaped as `\u007f`, valid JSON.
pub fn escape_controls(text: &str, style: LineStyle) -> Cow<'_, str> {
    let keep = |c: char| match style {
        LineStyle::Text { ansi } => ansi && c == '\u{1b}',
        LineStyle::Json => c < ' ',
    };
    if !text.chars().any(|c| is_control(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !is_control(c) || keep(c) {
            out.push(c);
        } else if style == LineStyle::Json {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// A [`MakeWriter`] whose writers escape each line ([`escape_line`]) before passing it on.
#[derive(Debug, Clone)]
pub struct Escaping<M> {
    pub inner: M,
    pub style: LineStyle,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Escaping<M> {
    type Writer = EscapingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer(),
            style: self.style,
        }
    }
}

/// See [`Escaping`]. The formatter writes each event as one buffer, so a buffer is a line.
#[derive(Debug)]
pub struct EscapingWriter<W> {
    inner: W,
    style: LineStyle,
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write_all(&escape_line(buf, self.style))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// At most `per_second` lines (bursts up to `burst`) of one kind; the rest are counted and the
/// count is reported with the next line that gets through.
#[derive(Debug)]
pub struct LogBudget {
    limiter: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl LogBudget {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(per_second);
        Self {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when this line may be written.
    pub fn admit(&self) -> Option<u64> {
        match self.limiter.check() {
            Ok(()) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_in_both_formats_and_lines_stay_lines() {
        let text = LineStyle::Text { ansi: false };
        let forged =
            "Rejected. reason=type `x\n2026-01-01T00:00:00Z INFO forged\u{1b}[31m\u{9b}`\n";
        let escaped = String::from_utf8(escape_line(forged.as_bytes(), text).into_owned()).unwrap();
        assert_eq!(
            escaped,
            "Rejected. reason=type `x\\x0a2026-01-01T00:00:00Z INFO forged\\x1b[31m\\x9b`\n"
        );
        assert_eq!(escaped.matches('\n').count(), 1);
        // Colours of the formatter itself are kept on a terminal; other controls are not.
        let coloured = "\u{1b}[2mtime\u{1b}[0m a\rb\n";
        assert_eq!(
            escape_line(coloured.as_bytes(), LineStyle::Text { ansi: true }).as_ref(),
            "\u{1b}[2mtime\u{1b}[0m a\\x0db\n".as_bytes()
        );
        // JSON: serde_json escaped C0 already; DEL and C1 become valid JSON escapes.
        let json = "{\"m\":\"a\\u001b \u{7f}\u{9b}\"}\n";
        let out = escape_line(json.as_bytes(), LineStyle::Json);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["m"], "a\u{1b} \u{7f}\u{9b}");
        assert!(!out.contains(&0x7f));
        // A clean line is passed through as it is.
        assert!(matches!(
            escape_line(b"plain line\n", text),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_budget_admits_its_burst_then_counts_what_it_suppresses() {
        let budget = LogBudget::new(1, 3);
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.admit(), None);
        assert_eq!(budget.admit(), None);
        assert_eq!(budget.suppressed.load(Ordering::Relaxed), 2);
    }
}
