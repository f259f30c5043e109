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
use std::future::Future;
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
        Self::spawn_on(Consul::new(settings.rs_consul_config()), service)
    }

    /// Starts watching `service` in `catalogue`.
    fn spawn_on(catalogue: impl Catalogue, service: &str) -> Self {
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
        let service = service.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = watch_loop(catalogue, service, &sender) => {}
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

/// What one blocking-query loop keeps between calls, with the rules every watch of this crate
/// follows (the service watches here, the KV watches in [`crate::kv`]): the index sent back
/// ([`next_index`]) and forgotten after an error, errors backed off with jitter up to
/// [`RETRY_CAP`], successful polls paced by a token bucket.
pub(crate) struct Polling {
    /// What is watched, for the logs: a service name or a KV prefix.
    subject: String,
    index: u64,
    failures: u32,
    polls: TokenBucket,
}

impl Polling {
    pub(crate) fn new(subject: &str) -> Polling {
        Polling {
            subject: subject.to_owned(),
            index: 0,
            failures: 0,
            polls: TokenBucket::new(POLL_BURST, POLL_RATE),
        }
    }

    /// The index to send: none before the first answer and after an error.
    pub(crate) fn index(&self) -> Option<u64> {
        (self.index > 0).then_some(self.index)
    }

    /// Notes an answer carrying index `returned`. True when it ends a run of failed calls.
    pub(crate) fn answered(&mut self, returned: u64) -> bool {
        let failures = std::mem::take(&mut self.failures);
        if failures > 0 {
            info!(
                watching = self.subject,
                "Consul reachable again after {failures} failed calls"
            );
        }
        self.index = next_index(self.index, returned);
        failures > 0
    }

    /// The pause after an answer, before the next query.
    pub(crate) async fn pace(&mut self) {
        tokio::time::sleep(self.polls.take(tokio::time::Instant::now())).await;
    }

    /// Notes a failed call (what is published stays, as `kept`) and waits out its backoff. The
    /// first failure of a run is a warning, the others debug lines.
    pub(crate) async fn failed(&mut self, kept: &str, err: &str) {
        self.failures += 1;
        self.index = 0;
        let delay = backoff::delay(self.failures, RETRY_BASE, RETRY_CAP);
        if self.failures == 1 {
            warn!(
                watching = self.subject,
                "Consul unreachable, keeping the last known {kept}: {err}"
            );
        } else {
            debug!(
                watching = self.subject,
                failures = self.failures,
                ?delay,
                "Consul still unreachable: {err}"
            );
        }
        tokio::time::sleep(delay).await;
    }
}

/// Counts a failed poll of published state, and marks it stale at the first of a run. True when
/// the status changed (what watchers are woken for).
pub(crate) fn note_failed_poll(status: &mut WatchStatus, failed_polls: &mut u64) -> bool {
    *failed_polls += 1;
    match status {
        WatchStatus::Stale { .. } => false,
        WatchStatus::Starting | WatchStatus::Live => {
            *status = WatchStatus::Stale {
                since: Instant::now(),
            };
            true
        }
    }
}

/// One answer to a blocking query: the index to send back and the passing providers.
struct Answer {
    index: u64,
    providers: Vec<Provider>,
}

/// Where a watch asks for passing instances: the Consul agent, or in unit tests a scripted
/// agent, so that the loop's timers (grace, backoff, pacing) run on paused time.
trait Catalogue: Send + 'static {
    /// The passing instances of `service`: a blocking query that returns once the index passes
    /// `index` (at once without one) or `wait` ends.
    fn passing(
        &self,
        service: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> impl Future<Output = Result<Answer, String>> + Send;
}

impl Catalogue for Consul {
    async fn passing(
        &self,
        service: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<Answer, String> {
        let options = QueryOptions {
            index,
            wait: Some(wait),
            timeout: Some(wait + wait / 16 + TIMEOUT_SLACK),
            ..QueryOptions::default()
        };
        let request = GetServiceNodesRequest {
            service,
            passing: true,
            ..GetServiceNodesRequest::default()
        };
        let answer = self
            .get_service_nodes(request, Some(options))
            .await
            .map_err(|err| err.to_string())?;
        Ok(Answer {
            index: answer.index,
            providers: providers_of(answer.response),
        })
    }
}

async fn watch_loop(
    catalogue: impl Catalogue,
    service: String,
    sender: &watch::Sender<ProviderSet>,
) {
    // tokio's clock, not the system's, for every timer here: tests run it paused.
    use tokio::time::Instant;
    let mut polling = Polling::new(&service);
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
        match catalogue.passing(&service, polling.index(), wait).await {
            Ok(answer) => {
                if polling.answered(answer.index) {
                    let known = sender.borrow().providers.to_vec();
                    grace = Some((Instant::now() + REJOIN_GRACE, known));
                }
                let mut providers = answer.providers;
                if let Some((until, known)) = &grace {
                    if Instant::now() < *until {
                        keep_known(&mut providers, known);
                    } else {
                        grace = None;
                    }
                }
                publish(sender, providers);
                polling.pace().await;
            }
            Err(err) => {
                sender.send_if_modified(|set| {
                    note_failed_poll(&mut set.status, &mut set.failed_polls)
                });
                polling.failed("providers", &err).await;
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

    /// What a scripted agent lists, and whether it answers at all.
    #[derive(Clone)]
    struct Listing {
        up: bool,
        index: u64,
        providers: Vec<Provider>,
    }

    /// An agent played by the test, answering blocking queries as Consul does (at once when the
    /// index moved, else when the listing changes or the wait ends; an error while it is down),
    /// so that the watch's timers run on tokio's paused clock. The real agent's side of the
    /// same behaviour is in `tests/discovery.rs`.
    #[derive(Clone)]
    struct ScriptedAgent(Arc<watch::Sender<Listing>>);

    impl ScriptedAgent {
        fn listing(addresses: &[&str]) -> ScriptedAgent {
            let listing = Listing {
                up: true,
                index: 10,
                providers: addresses.iter().map(|a| provider(a)).collect(),
            };
            ScriptedAgent(Arc::new(watch::channel(listing).0))
        }

        fn stop(&self) {
            self.0.send_modify(|l| l.up = false);
        }

        /// Back as an agent restarted without its state: listing nobody, its index from 1.
        fn start_again_without_state(&self) {
            self.0.send_replace(Listing {
                up: true,
                index: 1,
                providers: Vec::new(),
            });
        }

        /// An instance registers (again).
        fn register(&self, address: &str) {
            self.0.send_modify(|l| {
                l.index += 1;
                l.providers.push(provider(address));
                l.providers.sort();
            });
        }
    }

    impl Catalogue for ScriptedAgent {
        async fn passing(
            &self,
            _service: &str,
            index: Option<u64>,
            wait: Duration,
        ) -> Result<Answer, String> {
            let mut listing = self.0.subscribe();
            let moved = listing.wait_for(|l| !l.up || Some(l.index) != index);
            let _ = tokio::time::timeout(wait, moved).await;
            let listing = listing.borrow().clone();
            match listing.up {
                true => Ok(Answer {
                    index: listing.index,
                    providers: listing.providers,
                }),
                false => Err("connection refused".into()),
            }
        }
    }

    fn addresses(set: &ProviderSet) -> Vec<&str> {
        set.providers.iter().map(|p| p.address.as_str()).collect()
    }

    /// Waits (on the paused clock) until the watch publishes a set `until` accepts.
    async fn published(watch: &ProviderWatch, until: impl Fn(&ProviderSet) -> bool) -> ProviderSet {
        let mut sets = watch.subscribe();
        let set = sets.wait_for(|set| until(set)).await.unwrap();
        set.clone()
    }

    /// Starts a watch on `agent` and waits until it publishes what the agent lists.
    async fn live_watch(agent: &ScriptedAgent) -> ProviderWatch {
        let watch = ProviderWatch::spawn_on(agent.clone(), "grading");
        let expected = agent.0.borrow().providers.clone();
        published(&watch, |s| {
            s.status == WatchStatus::Live && *s.providers == *expected
        })
        .await;
        watch
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_back_without_its_state_keeps_the_known_providers_until_the_grace_ends() {
        let agent = ScriptedAgent::listing(&["127.0.0.1:6001", "127.0.0.1:6002"]);
        let watch = live_watch(&agent).await;

        agent.stop();
        published(&watch, |s| matches!(s.status, WatchStatus::Stale { .. })).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        agent.start_again_without_state();
        published(&watch, |s| s.status == WatchStatus::Live).await;
        let back = tokio::time::Instant::now();
        // One instance registers again in the meantime, the other never does.
        tokio::time::sleep(Duration::from_secs(2)).await;
        agent.register("127.0.0.1:6001");

        tokio::time::sleep_until(back + REJOIN_GRACE - Duration::from_millis(1)).await;
        assert_eq!(
            addresses(&watch.current()),
            ["127.0.0.1:6001", "127.0.0.1:6002"],
            "both kept until the grace ends"
        );
        // The watch asks again by then, so the one still missing goes without any change in
        // Consul, at the first answer after the grace.
        let dropped = tokio::time::timeout(
            Duration::from_secs(2),
            published(&watch, |s| s.providers.len() == 1),
        )
        .await
        .expect("the missing provider is dropped within a second of the grace's end");
        assert_eq!(addresses(&dropped), ["127.0.0.1:6001"]);
        assert_eq!(dropped.status, WatchStatus::Live);
        eprintln!("dropped {:?} after the agent came back", back.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_outage_a_deregistered_provider_goes_at_once() {
        let agent = ScriptedAgent::listing(&["127.0.0.1:6001", "127.0.0.1:6002"]);
        let watch = live_watch(&agent).await;
        let started = tokio::time::Instant::now();
        agent.0.send_modify(|l| {
            l.index += 1;
            l.providers.pop();
        });
        let set = published(&watch, |s| s.providers.len() == 1).await;
        assert_eq!(addresses(&set), ["127.0.0.1:6001"]);
        assert!(
            started.elapsed() < Duration::from_millis(10),
            "no grace without an outage: gone after {:?}",
            started.elapsed()
        );
    }

    /// Retries back off with jitter (so many watchers never hit a recovering agent in lockstep)
    /// but stay at most [`RETRY_CAP`] apart, so a returning agent is seen within it.
    #[tokio::test(start_paused = true)]
    async fn an_unreachable_agent_is_retried_ever_less_often_and_seen_within_the_cap_on_its_return()
    {
        let agent = ScriptedAgent::listing(&["127.0.0.1:6001"]);
        let watch = live_watch(&agent).await;
        agent.stop();
        let stale = published(&watch, |s| matches!(s.status, WatchStatus::Stale { .. })).await;
        assert_eq!(
            addresses(&stale),
            ["127.0.0.1:6001"],
            "the last set is kept"
        );

        let polls = |set: ProviderSet| set.failed_polls;
        let in_first_second = {
            tokio::time::sleep(Duration::from_secs(1)).await;
            polls(watch.current())
        };
        tokio::time::sleep(Duration::from_secs(59)).await;
        let in_a_minute = polls(watch.current());
        // Delays of at least half of 100 ms, 200 ms, ... up to half of the 5 s cap: at most
        // about 30 calls in a minute; at most the cap apart: at least 12.
        assert!(
            (4..=5).contains(&in_first_second),
            "{in_first_second} calls in the first second"
        );
        assert!(
            (12..=30).contains(&in_a_minute),
            "{in_a_minute} calls in a minute"
        );

        agent.0.send_modify(|l| l.up = true);
        let back = tokio::time::Instant::now();
        published(&watch, |s| s.status == WatchStatus::Live).await;
        assert!(
            back.elapsed() <= RETRY_CAP,
            "seen {:?} after its return",
            back.elapsed()
        );
    }
}
