//! One long-lived blocking query on a Consul KV prefix, publishing the keys under it.
//!
//! The loop follows the same rules as the service watches ([`crate::watch`]): it sends back the
//! last `X-Consul-Index` ([`next_index`]), starts over when the index goes backwards, gives the
//! HTTP call more time than `wait + wait/16`, paces successful polls with a token bucket and backs
//! off with jitter on errors. While Consul is unreachable the last snapshot stays published,
//! marked stale. There is no rejoin grace as for providers: KV lives on the servers and survives
//! an agent restart, and nobody puts keys back the way instances re-register, so what Consul lists
//! once it answers again is the truth.
//!
//! Everything a writer of the KV store controls is bounded: the answer is read up to
//! [`MAX_ANSWER_BYTES`] (a larger one is refused whole, its index still followed), and a value
//! above [`MAX_VALUE_BYTES`] is published as [`KvValue::TooLarge`] without being decoded.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::warn;

use crate::consul::ConsulSettings;
use crate::watch::{Polling, note_failed_poll};
pub use crate::watch::{WatchStatus, next_index};

/// How long Consul may hold one blocking query when nothing changes. Shorter than the service
/// watches' 5 minutes because one change never wakes it: deleting a parent folder
/// (`consul kv delete -recurse gradebook/config/`) leaves one tombstone on the parent, outside
/// the watched prefix, so the prefix's index does not move (seen on Consul 1.8). The next query
/// after the wait sees the keys gone; an idle watch costs one request a minute.
const WAIT: Duration = Duration::from_secs(60);
/// Extra time on top of Consul's own `wait + wait/16` before our HTTP client gives up.
const TIMEOUT_SLACK: Duration = Duration::from_secs(5);
/// Largest answer read for one prefix: room for many small settings, and a bound on memory when
/// someone stores blobs under it.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Largest value decoded: settings are short words and numbers.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The value of one key, as far as it is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvValue {
    /// UTF-8 text within [`MAX_VALUE_BYTES`].
    Text(String),
    /// A value of this many bytes, above [`MAX_VALUE_BYTES`]: not decoded.
    TooLarge(usize),
    /// A value that is not UTF-8 text.
    NotText,
}

/// One key under the watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key without the prefix, e.g. `passing_score`.
    pub key: String,
    pub value: KvValue,
}

/// What a KV watch publishes: the keys under one prefix and how much to trust them.
#[derive(Debug, Clone)]
pub struct KvSnapshot {
    pub prefix: Arc<str>,
    /// Sorted by key; folder markers (keys ending in `/`) left out.
    pub entries: Arc<[KvEntry]>,
    /// The `X-Consul-Index` of the answer the entries come from (0 before the first).
    pub index: u64,
    /// Bumped each time `entries` changes.
    pub generation: u64,
    pub status: WatchStatus,
    /// Consul calls that failed since the watch started.
    pub failed_polls: u64,
}

impl KvSnapshot {
    /// What a watch of `prefix` publishes before Consul's first answer: no keys, starting.
    pub fn starting(prefix: &str) -> KvSnapshot {
        KvSnapshot {
            prefix: prefix.into(),
            entries: Arc::from([]),
            index: 0,
            generation: 0,
            status: WatchStatus::Starting,
            failed_polls: 0,
        }
    }
}

/// A handle on a running KV watch; the loop stops when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct KvWatch {
    receiver: watch::Receiver<KvSnapshot>,
}

impl KvWatch {
    /// Starts watching the keys under `prefix` (which should end in `/`) through the agent
    /// described by `settings`, with its token.
    pub fn spawn(settings: &ConsulSettings, prefix: &str) -> Self {
        let (sender, receiver) = watch::channel(KvSnapshot::starting(prefix));
        let client = KvClient::new(settings.clone());
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = watch_loop(client, prefix, &sender) => {}
                () = sender.closed() => {}
            }
        });
        KvWatch { receiver }
    }

    /// The snapshot as it stands now.
    pub fn current(&self) -> KvSnapshot {
        self.receiver.borrow().clone()
    }

    /// A receiver to await changes on.
    pub fn subscribe(&self) -> watch::Receiver<KvSnapshot> {
        self.receiver.clone()
    }
}

/// One answer to a blocking query on a prefix.
struct Answer {
    index: u64,
    /// `None` when the answer was too large to read: the index is still followed.
    entries: Option<Vec<KvEntry>>,
}

/// The wire form of one key in `GET /v1/kv/<prefix>?recurse`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireEntry {
    key: String,
    value: Option<String>,
}

struct KvClient {
    settings: ConsulSettings,
    http: reqwest::Client,
}

impl KvClient {
    fn new(settings: ConsulSettings) -> Self {
        KvClient {
            settings,
            http: crate::consul::agent_http_client(),
        }
    }

    /// The keys under `prefix`: a blocking query that returns once the index passes `index` (at
    /// once without one) or `wait` ends.
    async fn list(
        &self,
        prefix: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<Answer, String> {
        let mut url = format!("{}/v1/kv/{prefix}?recurse=true", self.settings.address);
        if let Some(index) = index {
            url.push_str(&format!("&index={index}&wait={}ms", wait.as_millis()));
        }
        let mut request = self.http.get(url).timeout(wait + wait / 16 + TIMEOUT_SLACK);
        if let Some(token) = &self.settings.token {
            request = request.header("X-Consul-Token", token.expose());
        }
        let mut response = request.send().await.map_err(|err| err.to_string())?;
        let status = response.status();
        let returned = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // No key under the prefix: a 404 that still carries the index to block on.
        if status == StatusCode::NOT_FOUND {
            let index = returned.ok_or("a 404 without X-Consul-Index")?;
            return Ok(Answer {
                index,
                entries: Some(Vec::new()),
            });
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.trim().chars().take(200).collect();
            return Err(format!("Consul answered {status}: {body}"));
        }
        let index = returned.ok_or("an answer without X-Consul-Index")?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| err.to_string())? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Ok(Answer {
                    index,
                    entries: None,
                });
            }
            body.extend_from_slice(&chunk);
        }
        let wire: Vec<WireEntry> =
            serde_json::from_slice(&body).map_err(|err| format!("unreadable answer: {err}"))?;
        Ok(Answer {
            index,
            entries: Some(entries_of(prefix, wire)),
        })
    }
}

/// The keys relative to `prefix`, sorted, values decoded within their bound.
fn entries_of(prefix: &str, wire: Vec<WireEntry>) -> Vec<KvEntry> {
    let mut entries: Vec<KvEntry> = wire
        .into_iter()
        .filter(|entry| !entry.key.ends_with('/'))
        .filter_map(|entry| {
            let key = entry.key.strip_prefix(prefix)?.to_owned();
            Some(KvEntry {
                key,
                value: decode(entry.value.as_deref().unwrap_or_default()),
            })
        })
        .collect();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

/// Decodes a base64 value as Consul sends it, refusing to decode one above the bound.
fn decode(encoded: &str) -> KvValue {
    // Four base64 characters carry three bytes, less one per `=` of padding.
    let padding = encoded.bytes().rev().take_while(|b| *b == b'=').count();
    let size = (encoded.len() / 4 * 3).saturating_sub(padding);
    if size > MAX_VALUE_BYTES {
        return KvValue::TooLarge(size);
    }
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => KvValue::Text(text),
            Err(_) => KvValue::NotText,
        },
        Err(_) => KvValue::NotText,
    }
}

async fn watch_loop(client: KvClient, prefix: String, sender: &watch::Sender<KvSnapshot>) {
    let mut polling = Polling::new(&prefix);
    loop {
        match client.list(&prefix, polling.index(), WAIT).await {
            Ok(answer) => {
                polling.answered(answer.index);
                match answer.entries {
                    Some(entries) => publish(sender, answer.index, entries),
                    None => {
                        warn!(
                            prefix,
                            "the keys under {prefix} take more than {MAX_ANSWER_BYTES} bytes: \
                             ignored, the last good ones kept"
                        );
                        sender.send_modify(|s| s.status = WatchStatus::Live);
                    }
                }
                polling.pace().await;
            }
            Err(err) => {
                sender.send_if_modified(|snapshot| {
                    note_failed_poll(&mut snapshot.status, &mut snapshot.failed_polls)
                });
                polling.failed("keys", &err).await;
            }
        }
    }
}

/// Publishes the entries when they changed, or when the watch goes live.
fn publish(sender: &watch::Sender<KvSnapshot>, index: u64, entries: Vec<KvEntry>) {
    sender.send_if_modified(|snapshot| {
        let was_live = snapshot.status == WatchStatus::Live;
        snapshot.status = WatchStatus::Live;
        snapshot.index = index;
        if *snapshot.entries == *entries {
            return !was_live;
        }
        snapshot.entries = entries.into();
        snapshot.generation += 1;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(key: &str, value: Option<&[u8]>) -> WireEntry {
        WireEntry {
            key: key.into(),
            value: value.map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
        }
    }

    #[test]
    fn keys_lose_their_prefix_and_folders_are_left_out() {
        let entries = entries_of(
            "gradebook/config/portal/",
            vec![
                wire("gradebook/config/portal/", None),
                wire("gradebook/config/portal/page_size", Some(b"20")),
                wire("gradebook/config/portal/empty", None),
            ],
        );
        assert_eq!(
            entries,
            [
                KvEntry {
                    key: "empty".into(),
                    value: KvValue::Text(String::new())
                },
                KvEntry {
                    key: "page_size".into(),
                    value: KvValue::Text("20".into())
                },
            ]
        );
    }

    #[test]
    fn a_large_value_is_not_decoded_and_binary_is_not_text() {
        let big = vec![b'a'; 1024 * 1024];
        let encoded = base64::engine::general_purpose::STANDARD.encode(&big);
        assert_eq!(decode(&encoded), KvValue::TooLarge(1024 * 1024));
        let limit = vec![b'a'; MAX_VALUE_BYTES];
        let encoded = base64::engine::general_purpose::STANDARD.encode(&limit);
        assert!(matches!(decode(&encoded), KvValue::Text(t) if t.len() == MAX_VALUE_BYTES));
        let encoded = base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe]);
        assert_eq!(decode(&encoded), KvValue::NotText);
    }
}
