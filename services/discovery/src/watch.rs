//! One long-lived blocking query per dependency, publishing the set of instances whose checks
//! all pass.
//!
//! The loop follows Consul's rules for blocking queries: it sends back the last `X-Consul-Index`,
//! starts over when the index goes backwards, never sends an index below 1, gives the HTTP call
//! more time than `wait + wait/16`, paces successful polls with a token bucket and backs off with
//! jitter on errors. While Consul is unreachable the last known set stays published, marked stale
//! with its age, so callers keep working on it; once it answers again, providers it no longer
//! lists stay published for [`REJOIN_GRACE`], the time an agent that lost its state takes to have
//! every instance registered again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rs_consul::{Consul, GetServiceNodesRequest, QueryOptions, ServiceNode};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backoff::{self, TokenBucket};
use crate::consul::ConsulSettings;

/// How long Consul may hold one blocking query when nothing changes: an idle watch costs the
/// agent one request per `WAIT`.
const WAIT: Duration = Duration::from_secs(300);
/// Extra time on top of Consul's own `wait + wait/16` before our HTTP client gives up.
const TIMEOUT_SLACK: Duration = Duration::from_secs(5);
/// Error backoff: from 100 ms, doubling, capped so a returning agent is seen within ~5 s.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);
/// Successful polls: a burst of 10 at once (changes seen in milliseconds), 10 per second after.
const POLL_BURST: u32 = 10;
const POLL_RATE: u32 = 10;
/// After Consul was unreachable, how long a provider it no longer lists stays published. An
/// agent restarted without its state lists nobody until each instance registers again (within
/// ~2 s, see `registration`); taking that for "no provider" would turn an agent restart into an
/// outage. A provider that really went meanwhile is ejected by the pool at its first refused
/// connection, so keeping it a while costs little.
pub const REJOIN_GRACE: Duration = Duration::from_secs(10);

/// One instance of a service, as Consul lists it among the passing ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Provider {
    /// `host:port` to send requests to.
    pub address: String,
    /// Consul's service ID of the instance.
    pub id: String,
}

/// Whether the published set is live or what is left from the last contact with Consul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStatus {
    /// Consul has not answered yet.
    Starting,
    /// The blocking query is in place: the set is current.
    Live,
    /// Consul is unreachable; the set is the one it last gave, at `since`.
    Stale { since: Instant },
}

/// What a watch publishes: the passing providers of one service and how much to trust them.
#[derive(Debug, Clone)]
pub struct ProviderSet {
    pub service: Arc<str>,
    /// Sorted, so equal sets compare equal.
    pub providers: Arc<[Provider]>,
    /// Bumped each time `providers` changes, so pools rebuild only when needed.
    pub generation: u64,
    pub status: WatchStatus,
    /// When `providers` last changed.
    pub changed_at: Instant,
    /// Consul calls that failed since the watch started: retries are capped, this shows how many.
    pub failed_polls: u64,
}

impl ProviderSet {
    /// How old the set is: zero while live, otherwise the time since Consul last answered.
    pub fn age(&self) -> Duration {
        match self.status {
            WatchStatus::Stale { since } => since.elapsed(),
            WatchStatus::Starting | WatchStatus::Live => Duration::ZERO,
        }
    }
}

/// A handle on a running watch; the loop stops when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct ProviderWatch {
    receiver: watch::Receiver<ProviderSet>,
}

impl ProviderWatch {
    /// Starts watching `service` through the agent described by `settings`.
    pub fn spawn(settings: &ConsulSettings, service: &str) -> Self {
        let now = Instant::now();
        let initial = ProviderSet {
            service: service.into(),
            providers: Arc::from([]),
            generation: 0,
            status: WatchStatus::Starting,
            changed_at: now,
            failed_polls: 0,
        };
        let (sender, receiver) = watch::channel(initial);
        let consul = Consul::new(settings.rs_consul_config());
        let service = service.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = watch_loop(consul, service, &sender) => {}
                () = sender.closed() => {}
            }
        });
        ProviderWatch { receiver }
    }

    /// The set as it stands now.
    pub fn current(&self) -> ProviderSet {
        self.receiver.borrow().clone()
    }

    /// The current set's generation, without copying the set: a pool asks on every request.
    pub fn generation(&self) -> u64 {
        self.receiver.borrow().generation
    }

    /// A receiver to await changes on (`changed()`), for callers that react to them.
    pub fn subscribe(&self) -> watch::Receiver<ProviderSet> {
        self.receiver.clone()
    }

    /// Waits until the first answer from Consul (or `limit`), so a starting service can avoid a
    /// spurious "no provider" on its first requests.
    pub async fn ready(&self, limit: Duration) {
        let mut receiver = self.receiver.clone();
        let _ = tokio::time::timeout(
            limit,
            receiver.wait_for(|set| set.status != WatchStatus::Starting),
        )
        .await;
    }
}

/// The index to send on the next query, by Consul's rules for blocking queries.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        // The index went backwards (a server restored a snapshot, or a new leader): start over
        // with a fresh, non-blocking read.
        0
    } else {
        // An index of 0 would make every following query return at once.
        returned.max(1)
    }
}

async fn watch_loop(consul: Consul, service: String, sender: &watch::Sender<ProviderSet>) {
    let mut index: u64 = 0;
    let mut failures: u32 = 0;
    let mut polls = TokenBucket::new(POLL_BURST, POLL_RATE);
    // After an outage: until when, and which providers known before it, are kept published.
    let mut grace: Option<(Instant, Vec<Provider>)> = None;
    loop {
        // During the grace period a query returns by its end, so that what Consul lists then
        // is published even if nothing changes.
        let wait = match &grace {
            Some((until, _)) => {
                WAIT.min(until.saturating_duration_since(Instant::now()) + Duration::from_secs(1))
            }
            None => WAIT,
        };
        let options = QueryOptions {
            index: (index > 0).then_some(index),
            wait: Some(wait),
            timeout: Some(wait + wait / 16 + TIMEOUT_SLACK),
            ..QueryOptions::default()
        };
        let request = GetServiceNodesRequest {
            service: &service,
            passing: true,
            ..GetServiceNodesRequest::default()
        };
        match consul.get_service_nodes(request, Some(options)).await {
            Ok(answer) => {
                if failures > 0 {
                    info!(
                        service,
                        "Consul reachable again after {failures} failed calls"
                    );
                    let known = sender.borrow().providers.to_vec();
                    grace = Some((Instant::now() + REJOIN_GRACE, known));
                }
                failures = 0;
                index = next_index(index, answer.index);
                let mut providers = providers_of(answer.response);
                if let Some((until, known)) = &grace {
                    if Instant::now() < *until {
                        keep_known(&mut providers, known);
                    } else {
                        grace = None;
                    }
                }
                publish(sender, providers);
                tokio::time::sleep(polls.take(Instant::now())).await;
            }
            Err(err) => {
                failures += 1;
                index = 0;
                mark_stale(sender);
                let delay = backoff::delay(failures, RETRY_BASE, RETRY_CAP);
                if failures == 1 {
                    warn!(
                        service,
                        "Consul unreachable, keeping the last known providers: {err}"
                    );
                } else {
                    debug!(service, failures, ?delay, "Consul still unreachable: {err}");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn providers_of(nodes: Vec<ServiceNode>) -> Vec<Provider> {
    let mut providers: Vec<Provider> = nodes
        .into_iter()
        .map(|node| {
            // An instance registered without an address is reached at its node's address.
            let host = if node.service.address.is_empty() {
                node.node.address
            } else {
                node.service.address
            };
            Provider {
                address: join_host_port(&host, node.service.port),
                id: node.service.id,
            }
        })
        .collect();
    providers.sort();
    providers.dedup();
    providers
}

/// Adds to `providers` those of `known` it lacks, keeping it sorted and free of duplicates.
fn keep_known(providers: &mut Vec<Provider>, known: &[Provider]) {
    providers.extend(known.iter().cloned());
    providers.sort();
    providers.dedup();
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Publishes the set when it changed (or when the watch goes live), logging what came and went.
fn publish(sender: &watch::Sender<ProviderSet>, providers: Vec<Provider>) {
    sender.send_if_modified(|set| {
        let was_live = set.status == WatchStatus::Live;
        set.status = WatchStatus::Live;
        if *set.providers == *providers {
            return !was_live;
        }
        let diff = describe_diff(&set.providers, &providers);
        info!(service = %set.service, "{}: {diff}", set.service);
        set.providers = providers.into();
        set.generation += 1;
        set.changed_at = Instant::now();
        true
    });
}

fn mark_stale(sender: &watch::Sender<ProviderSet>) {
    sender.send_if_modified(|set| {
        set.failed_polls += 1;
        match set.status {
            WatchStatus::Stale { .. } => false,
            WatchStatus::Starting | WatchStatus::Live => {
                set.status = WatchStatus::Stale {
                    since: Instant::now(),
                };
                true
            }
        }
    });
}

/// `+a -b` for providers that appeared and disappeared; `(none)` when the set became empty.
fn describe_diff(before: &[Provider], after: &[Provider]) -> String {
    let old: BTreeSet<&str> = before.iter().map(|p| p.address.as_str()).collect();
    let new: BTreeSet<&str> = after.iter().map(|p| p.address.as_str()).collect();
    let mut parts: Vec<String> = new.difference(&old).map(|a| format!("+{a}")).collect();
    parts.extend(old.difference(&new).map(|a| format!("-{a}")));
    if parts.is_empty() {
        // Same addresses under other IDs: an instance was replaced in place.
        parts.push("instances replaced".into());
    }
    if after.is_empty() {
        parts.push("(none left)".into());
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_is_sent_back_as_returned() {
        assert_eq!(next_index(0, 42), 42);
        assert_eq!(next_index(42, 42), 42);
        assert_eq!(next_index(42, 43), 43);
    }

    #[test]
    fn an_index_going_backwards_starts_over() {
        assert_eq!(next_index(42, 7), 0);
    }

    #[test]
    fn an_index_below_one_is_treated_as_one() {
        assert_eq!(next_index(0, 0), 1);
    }

    fn provider(address: &str) -> Provider {
        Provider {
            address: address.into(),
            id: format!("grading-{address}"),
        }
    }

    #[test]
    fn the_diff_names_what_came_and_went() {
        let before = [provider("127.0.0.1:6000"), provider("127.0.0.1:6001")];
        let after = [provider("127.0.0.1:6001"), provider("127.0.0.1:6002")];
        assert_eq!(
            describe_diff(&before, &after),
            "+127.0.0.1:6002 -127.0.0.1:6000"
        );
        assert_eq!(
            describe_diff(&after, &[]),
            "-127.0.0.1:6001 -127.0.0.1:6002 (none left)"
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(join_host_port("::1", 6000), "[::1]:6000");
    }
}
