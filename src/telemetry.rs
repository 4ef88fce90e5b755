//! Logs: JSON lines by default (`RELAY_LOG_FORMAT=text` for people), levels by `RUST_LOG`.
//!
//! Nothing here redacts: the types do. Secrets have no `Display`, tokens
//! display redacted, and bodies are never logged.

use std::fmt::{self, Write};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    // A second init (tests build several apps in one process) keeps the first.
    let _ = match format {
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// For the CLI's operations: their audit lines (and warnings) on standard
/// error, so standard output stays the command's own answer.
pub fn init_for_operator_commands() {
    let format = match std::env::var("RELAY_LOG_FORMAT").as_deref().map(str::trim) {
        Ok("text") => LogFormat::Text,
        _ => LogFormat::Json,
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,accelerate_relay::operations=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The JSON line of an event, written straight into the line's buffer: the
/// same shape as tracing-subscriber's flattened JSON (`timestamp`, `level`,
/// the event's fields in order, `target`), without its per-field detours
/// (a `String` per `%value`, a UTF-8 check per piece written), which took
/// twice the instructions per line (bench/README.md).
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Events from crates that log through `log` carry their real target in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = JsonFields {
            out: &mut writer,
            skip_log_fields: normalized.is_some(),
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        json_string(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// Appends each field as `,"name":value`; numbers and booleans bare, the rest as strings.
struct JsonFields<'a, W: Write> {
    out: &'a mut W,
    skip_log_fields: bool,
    result: fmt::Result,
}

impl<W: Write> JsonFields<'_, W> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() || (self.skip_log_fields && field.name().starts_with("log.")) {
            return;
        }
        self.result = self
            .out
            .write_char(',')
            .and_then(|()| json_string(self.out, field.name()))
            .and_then(|()| self.out.write_char(':'))
            .and_then(|()| value(self.out));
    }
}

impl<W: Write> Visit for JsonFields<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| json_string(out, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; serde_json writes those as null too.
        self.entry(field, |out| match value.is_finite() {
            true => write!(out, "{value}"),
            false => out.write_str("null"),
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(Escaped(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

fn json_string(out: &mut impl Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(&mut *out).write_str(s)?;
    out.write_char('"')
}

/// Writes what it is given as the inside of a JSON string (RFC 8259 §7).
struct Escaped<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x00..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            match escape {
                "" => write!(self.0, "\\u{byte:04x}")?,
                escape => self.0.write_str(escape)?,
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `log` writes through the relay's JSON format.
    fn lines(log: impl FnOnce()) -> Vec<String> {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn an_event_is_one_json_line_in_tracing_subscribers_flattened_shape() {
        let error = std::io::Error::other("disk \"full\"\nretry");
        let lines = lines(|| {
            tracing::warn!(
                environment = %"sandbox", event_id = "evt_\u{e9}\\\"x\"", status = 503u16,
                offset = -3i64, retried = true, ratio = f64::NAN, error = %error,
                control = "a\u{1}b\tc\r", "webhook not stored"
            )
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line: Value = serde_json::from_str(&lines[0]).expect("valid JSON");
        let keys = [
            "timestamp",
            "level",
            "message",
            "environment",
            "event_id",
            "status",
            "offset",
            "retried",
            "ratio",
            "error",
            "control",
            "target",
        ];
        assert_eq!(line.as_object().unwrap().len(), keys.len(), "{line}");
        let at: Vec<usize> = keys
            .iter()
            .map(|k| lines[0].find(&format!("\"{k}\":")).expect(k))
            .collect();
        assert!(at.is_sorted(), "keys in this order: {keys:?}: {}", lines[0]);
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "webhook not stored");
        assert_eq!(line["environment"], "sandbox");
        assert_eq!(line["event_id"], "evt_\u{e9}\\\"x\"");
        assert_eq!(line["status"], 503);
        assert_eq!(line["offset"], -3);
        assert_eq!(line["retried"], true);
        assert_eq!(line["ratio"], Value::Null);
        assert_eq!(line["error"], "disk \"full\"\nretry");
        assert_eq!(line["control"], "a\u{1}b\tc\r");
        assert_eq!(line["target"], module_path!());
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() == 27 && timestamp.ends_with('Z') && &timestamp[10..11] == "T",
            "RFC 3339 with microseconds, UTC: {timestamp}"
        );
    }

    #[test]
    fn events_logged_through_the_log_crate_keep_their_own_target() {
        let _ = tracing_log::LogTracer::init();
        let lines = lines(|| log::info!(target: "actix_server::worker", "shutting down"));
        let line: Value = serde_json::from_str(&lines[0]).expect("valid JSON");
        assert_eq!(line["target"], "actix_server::worker");
        assert_eq!(line["message"], "shutting down");
        let object = line.as_object().unwrap();
        assert!(
            !object.keys().any(|k| k.starts_with("log.")),
            "the log crate's own fields are folded into target: {line}"
        );
    }

    proptest! {
        #[test]
        fn any_text_survives_as_a_json_string(text in any::<String>()) {
            let mut out = String::new();
            json_string(&mut out, &text).unwrap();
            prop_assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
        }
    }
}
