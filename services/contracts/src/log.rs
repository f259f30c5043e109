//! A log record as the log service answers `GET /log`: the stored record and its number.

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

#[cfg(test)]
mod tests {
    use super::*;

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
