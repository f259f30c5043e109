//! What a reader sees when several log instances run. Each instance keeps its own records, with
//! its own numbering (`seq`), so the logs page reads every healthy instance and merges their
//! answers ([`merge`]), and pages back with one position per instance ([`Cursor`]): a number of
//! one instance is never used on another.
//!
//! The merge shows the newest records overall by time, but it never reorders one instance's
//! records: it always takes the newest record left of some instance. So what a page shows of an
//! instance is a run of its newest records below its position, and the next page starts in every
//! instance exactly where this one stopped: paging back shows each record once, whatever the
//! clocks that stamped the records say.

use std::collections::BTreeMap;

use contracts::log::LogRecord;
use discovery::Provider;

/// The most log instances one "Older records" link may name.
pub const MAX_CURSOR_INSTANCES: usize = 32;
/// The longest instance ID a cursor may name, in bytes (Consul's IDs here are `log-HOST-PORT`).
pub const MAX_INSTANCE_ID_BYTES: usize = 256;

/// Where paging back stands in each log instance: of an instance it names, the records still to
/// show are those numbered below its position. Empty on the newest page, where every healthy
/// instance is read from its newest record. On an older page only the instances named are read:
/// one that is not named either had nothing older to show, or appeared after the newest page
/// was read, so all its records are newer than the page and belong on the newest page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Instance ID (Consul's service ID) to the `before` of that instance, at least 1.
    positions: BTreeMap<String, u64>,
}

/// Why a cursor from a query was refused; the message names the parameter, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error(
        "before: a record number of a log instance, written INSTANCE:NUMBER as the \"Older records\" link writes it (the number a whole number from 1, the instance at most {MAX_INSTANCE_ID_BYTES} bytes)."
    )]
    Malformed,
    #[error("before: a record number for at most {MAX_CURSOR_INSTANCES} log instances.")]
    TooMany,
    #[error("before: a record number once per log instance; one is named twice.")]
    Repeated,
}

impl Cursor {
    /// The cursor that the `before` values of a query describe, each `INSTANCE:SEQ` (already
    /// URL-decoded; the ID may itself contain `:`, the number cannot). Empty values are ignored,
    /// as a form leaves them.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Cursor, CursorError> {
        let mut positions = BTreeMap::new();
        for value in values.into_iter().map(str::trim).filter(|v| !v.is_empty()) {
            if positions.len() == MAX_CURSOR_INSTANCES {
                return Err(CursorError::TooMany);
            }
            let (id, seq) = value.rsplit_once(':').ok_or(CursorError::Malformed)?;
            let seq = seq
                .parse::<u64>()
                .ok()
                .filter(|&seq| seq >= 1)
                .ok_or(CursorError::Malformed)?;
            if id.is_empty() || id.len() > MAX_INSTANCE_ID_BYTES {
                return Err(CursorError::Malformed);
            }
            if positions.insert(id.to_owned(), seq).is_some() {
                return Err(CursorError::Repeated);
            }
        }
        Ok(Cursor { positions })
    }

    /// The `before` values of a query for this cursor, as [`Cursor::parse`] reads them (not yet
    /// URL-encoded: the caller encodes the whole query).
    pub fn query_values(&self) -> impl Iterator<Item = String> + '_ {
        self.positions.iter().map(|(id, seq)| format!("{id}:{seq}"))
    }

    /// True on the newest page.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Each instance named, with its position, in the order of their IDs.
    pub fn positions(&self) -> impl Iterator<Item = (&str, u64)> {
        self.positions.iter().map(|(id, &seq)| (id.as_str(), seq))
    }

    /// The position in `instance`; `None` when it is read from its newest record.
    pub fn position(&self, instance: &str) -> Option<u64> {
        self.positions.get(instance).copied()
    }
}

/// What one instance answered for a page: its newest records below its position (at most the
/// page's size), oldest first, as `GET /log` gives them.
#[derive(Debug, Clone)]
pub struct Answer {
    pub instance: Provider,
    pub records: Vec<LogRecord>,
}

/// A record with its time read (`None` when it does not parse), to compare without re-reading.
type Timed = (Option<jiff::Timestamp>, LogRecord);

/// A page made of several instances' answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The records to show, newest first, each with the instance that holds it.
    pub records: Vec<(Provider, LogRecord)>,
    /// Where the page before this one starts. Instances not answered here (not healthy, or
    /// failing) keep their position, so they are read where they were once they answer again.
    pub next: Cursor,
}

/// The newest `limit` records of `answers`, newest first: by time, then by instance ID, each
/// instance's own order kept (see the module docs). `cursor` is the page's; `limit` is also how
/// many records each instance was asked for, so an answer shorter than it is all there is.
pub fn merge(answers: Vec<Answer>, cursor: &Cursor, limit: usize) -> Merged {
    // Each instance's records with their times read once, the newest at the end to pop.
    let mut queues: Vec<(Provider, Vec<Timed>)> = answers
        .into_iter()
        .map(|answer| {
            let timed = answer
                .records
                .into_iter()
                .map(|record| (record.time.parse::<jiff::Timestamp>().ok(), record))
                .collect();
            (answer.instance, timed)
        })
        .collect();
    let fetched: Vec<usize> = queues.iter().map(|(_, records)| records.len()).collect();
    let mut records = Vec::with_capacity(limit);
    while records.len() < limit {
        // A time that does not parse sorts as the oldest: a real log service never sends one.
        let newest = queues
            .iter()
            .enumerate()
            .filter_map(|(i, (instance, queue))| {
                queue.last().map(|(time, _)| (time, &instance.id, i))
            })
            .max()
            .map(|(_, _, i)| i);
        let Some(i) = newest else { break };
        let (instance, queue) = &mut queues[i];
        let (_, record) = queue.pop().expect("the chosen queue is not empty");
        records.push((instance.clone(), record));
    }

    let mut next = cursor.clone();
    for ((instance, left), fetched) in queues.iter().zip(fetched) {
        let shown = fetched - left.len();
        let oldest_shown = records
            .iter()
            .rev()
            .find(|(holder, _)| holder.id == instance.id)
            .map(|(_, record)| record.seq);
        let position = match oldest_shown {
            // Nothing older matches in this instance: leave it out of the older pages.
            _ if fetched == 0 => None,
            _ if shown == fetched && fetched < limit => None,
            Some(seq) => Some(seq),
            // None shown: it stays where it was; from the newest page, just above its newest.
            None => cursor
                .position(&instance.id)
                .or_else(|| left.last().map(|(_, newest)| newest.seq.saturating_add(1))),
        };
        match position.filter(|&seq| seq > 1) {
            Some(seq) => next.positions.insert(instance.id.clone(), seq),
            None => next.positions.remove(&instance.id),
        };
    }
    Merged { records, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Provider {
        Provider {
            address: format!("{id}.example:4000"),
            id: id.to_owned(),
        }
    }

    /// A record of instance `holder`, numbered `seq`, at second `second` of a minute.
    fn record(holder: &str, seq: u64, second: u32) -> LogRecord {
        LogRecord {
            seq,
            time: format!("2026-11-30T00:00:{second:02}.000Z"),
            service: "demo".into(),
            level: "info".into(),
            message: format!("{holder} #{seq}"),
            trace_id: None,
        }
    }

    /// What `holder` holds below `before` (all without it), the newest `limit`, oldest first:
    /// `GET /log` as a function. `seconds[i]` is the time of record `i + 1`.
    fn answer(holder: &str, seconds: &[u32], before: Option<u64>, limit: usize) -> Answer {
        let below = before.map_or(seconds.len(), |before| before as usize - 1);
        let start = below.saturating_sub(limit);
        let records = (start..below)
            .map(|i| record(holder, i as u64 + 1, seconds[i]))
            .collect();
        Answer {
            instance: instance(holder),
            records,
        }
    }

    fn messages(merged: &Merged) -> Vec<String> {
        merged
            .records
            .iter()
            .map(|(_, r)| r.message.clone())
            .collect()
    }

    #[test]
    fn a_cursor_reads_back_as_it_was_written_whatever_the_ids_hold() {
        let written = Cursor::parse(["log-10.0.0.1-4000:57", "odd:id, with & spaces:3"]).unwrap();
        assert_eq!(written.position("log-10.0.0.1-4000"), Some(57));
        assert_eq!(written.position("odd:id, with & spaces"), Some(3));
        let values: Vec<String> = written.query_values().collect();
        let read = Cursor::parse(values.iter().map(String::as_str)).unwrap();
        assert_eq!(read, written);
        assert!(Cursor::parse(["", "  "]).unwrap().is_empty());
    }

    #[test]
    fn bad_cursors_are_refused_with_what_is_wrong() {
        for bad in ["57", "log:", "log:0", "log:-1", "log:x", ":5", "log:1e3"] {
            assert_eq!(Cursor::parse([bad]), Err(CursorError::Malformed), "{bad}");
        }
        let long = format!("{}:5", "x".repeat(MAX_INSTANCE_ID_BYTES + 1));
        assert_eq!(Cursor::parse([long.as_str()]), Err(CursorError::Malformed));
        assert_eq!(Cursor::parse(["a:1", "a:2"]), Err(CursorError::Repeated));
        let many: Vec<String> = (0..=MAX_CURSOR_INSTANCES)
            .map(|i| format!("i{i}:5"))
            .collect();
        assert_eq!(
            Cursor::parse(many.iter().map(String::as_str)),
            Err(CursorError::TooMany)
        );
        assert!(Cursor::parse(many[1..].iter().map(String::as_str)).is_ok());
        assert!(
            CursorError::Malformed
                .to_string()
                .starts_with("before: a record number")
        );
    }

    #[test]
    fn the_newest_records_of_all_instances_come_first_by_time() {
        let answers = vec![
            answer("a", &[1, 3, 5, 7], None, 3),
            answer("b", &[2, 4, 6, 8], None, 3),
        ];
        let merged = merge(answers, &Cursor::default(), 3);
        assert_eq!(messages(&merged), ["b #4", "a #4", "b #3"]);
        assert_eq!(merged.next.position("a"), Some(4));
        assert_eq!(merged.next.position("b"), Some(3));
    }

    #[test]
    fn equal_times_are_ordered_by_instance() {
        let answers = vec![answer("a", &[5], None, 10), answer("b", &[5], None, 10)];
        let merged = merge(answers, &Cursor::default(), 10);
        assert_eq!(messages(&merged), ["b #1", "a #1"]);
        assert!(merged.next.is_empty(), "{:?}", merged.next);
    }

    #[test]
    fn an_instance_none_of_whose_records_were_shown_stays_where_it_was() {
        let a = [10, 11, 12, 13];
        let b = [1, 2];
        let merged = merge(
            vec![answer("a", &a, None, 2), answer("b", &b, None, 2)],
            &Cursor::default(),
            2,
        );
        assert_eq!(messages(&merged), ["a #4", "a #3"]);
        // From the newest page: just above its newest record, so the next page starts with it.
        assert_eq!(merged.next.position("b"), Some(3));

        let merged = merge(
            vec![answer("a", &a, Some(3), 2), answer("b", &b, Some(3), 2)],
            &merged.next,
            2,
        );
        assert_eq!(messages(&merged), ["a #2", "a #1"]);
        assert_eq!(merged.next.position("b"), Some(3));
        assert_eq!(merged.next.position("a"), None, "a has nothing older");
    }

    #[test]
    fn an_instance_not_answered_keeps_its_position() {
        let cursor = Cursor::parse(["a:9", "gone:4"]).unwrap();
        let merged = merge(
            vec![answer("a", &[1, 2, 3, 4, 5, 6, 7, 8], Some(9), 3)],
            &cursor,
            3,
        );
        assert_eq!(messages(&merged), ["a #8", "a #7", "a #6"]);
        assert_eq!(merged.next.position("a"), Some(6));
        assert_eq!(merged.next.position("gone"), Some(4));
    }

    #[test]
    fn one_instances_own_order_is_kept_when_its_clock_went_backwards() {
        // b's record 2 is stamped earlier than its record 1: b still shows 2 before 1, and its
        // record 1 waits behind its record 2 rather than jump ahead of a's older ones.
        let answers = vec![
            answer("a", &[3, 6], None, 10),
            answer("b", &[5, 1], None, 10),
        ];
        let merged = merge(answers, &Cursor::default(), 10);
        assert_eq!(messages(&merged), ["a #2", "a #1", "b #2", "b #1"]);
    }

    #[test]
    fn an_answer_out_of_order_or_at_the_ends_of_numbering_does_not_break_the_page() {
        let mut junk = answer("b", &[9, 9, 9], None, 10);
        junk.records[0].seq = 0;
        junk.records[2].seq = u64::MAX;
        let merged = merge(
            vec![answer("a", &[10, 11, 12], None, 2), junk],
            &Cursor::default(),
            2,
        );
        assert_eq!(messages(&merged), ["a #3", "a #2"]);
        assert_eq!(
            merged.next.position("b"),
            Some(u64::MAX),
            "no overflow past the end"
        );
    }

    /// Pages back through two instances with interleaved and equal times, and with a clock
    /// going backwards: every record is shown once, each instance's in its own order.
    #[test]
    fn paging_back_shows_every_record_of_every_instance_once() {
        let a: Vec<u32> = (0..23).map(|i| (i * 2) % 50).collect();
        let b: Vec<u32> = (0..17).map(|i| (i * 3 + 1) % 50).rev().collect();
        let limit = 4;
        let mut cursor = Cursor::default();
        let mut seen = Vec::new();
        for _ in 0..100 {
            let read = |holder: &str, seconds: &[u32]| {
                let newest = cursor.is_empty();
                let position = cursor.position(holder);
                (newest || position.is_some()).then(|| answer(holder, seconds, position, limit))
            };
            let answers: Vec<Answer> = [read("a", &a), read("b", &b)]
                .into_iter()
                .flatten()
                .collect();
            let merged = merge(answers, &cursor, limit);
            assert!(merged.records.len() <= limit);
            seen.extend(messages(&merged));
            if merged.next.is_empty() {
                break;
            }
            assert_ne!(merged.next, cursor, "paging back must move");
            cursor = merged.next;
        }
        let mut expected: Vec<String> = (1..=a.len())
            .map(|seq| format!("a #{seq}"))
            .chain((1..=b.len()).map(|seq| format!("b #{seq}")))
            .collect();
        let mut shown = seen.clone();
        shown.sort();
        expected.sort();
        assert_eq!(shown, expected);
        for holder in ["a", "b"] {
            let seqs: Vec<u64> = seen
                .iter()
                .filter_map(|m| m.strip_prefix(&format!("{holder} #")))
                .map(|seq| seq.parse().unwrap())
                .collect();
            assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{holder}: {seqs:?}");
        }
    }
}
