//! A log record as the log service answers `GET /log`: the stored record and its number, and
//! what a trace id in it may be.

use serde::{Deserialize, Serialize};

/// One record of one log instance, as `GET /log` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Its place in its instance's file, which pages back with `before` on that instance only.
    /// Required: a record a reader cannot page past is an answer it cannot use.
    pub seq: u64,
    /// When the event happened: RFC 3339 UTC with milliseconds, e.g. `2026-11-21T16:05:03.123Z`.
    pub time: String,
    /// The service that logged it (see [`crate::service_name`]).
    pub service: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The message, as sent.
    pub message: String,
    /// The W3C trace-id of the request it belongs to, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The trace-id of W3C Trace Context (`traceparent`'s second field): 32 lowercase hex digits,
/// not all zero (the invalid value). Only that form is stored or asked for, so a trace id is
/// something any tracing tool can look up and never a carrier for arbitrary text.
pub fn is_trace_id(id: &str) -> bool {
    // A fold, not `all`: without an early exit the 32 bytes are checked several at a time (the
    // log checks the id of every record it stores).
    id.len() == 32
        && id.bytes().fold(true, |hex, b| {
            hex & (b.is_ascii_digit() | (b'a'..=b'f').contains(&b))
        })
        && id.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_is_32_lowercase_hex_digits_not_all_zero() {
        assert!(is_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "4bf92f3577b34da6a3ce929d0e0e473",
            "4bf92f3577b34da6a3ce929d0e0e47360",
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            "4bf92f3577b34da6a3ce929d0e0e473g",
            "00000000000000000000000000000000",
            "<script>alert(1)</script>aaaaaaa",
        ] {
            assert!(!is_trace_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_record_reads_as_the_log_service_writes_it_and_back() {
        let line = r#"{"seq":7,"time":"2026-11-21T16:05:03.123Z","service":"grading","level":"info","message":"grade added"}"#;
        let record: LogRecord = serde_json::from_str(line).unwrap();
        assert_eq!((record.seq, record.trace_id.as_deref()), (7, None));
        assert_eq!(serde_json::to_string(&record).unwrap(), line);
        let without_seq = r#"{"time":"t","service":"s","level":"info","message":"m"}"#;
        assert!(serde_json::from_str::<LogRecord>(without_seq).is_err());
    }
}
