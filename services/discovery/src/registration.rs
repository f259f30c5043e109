//! Keeps one instance registered with the local agent for as long as it serves.
//!
//! A dev agent, or one whose data dir was lost, forgets its services when it restarts. The keeper
//! holds a blocking query open on the instance's own agent entry, so it learns within
//! milliseconds that the entry is gone (the query returns 404, or the connection drops) and
//! registers again, retrying with jittered backoff while the agent is away. Consul being away
//! never stops the service: the keeper only logs.

use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::agent::{AgentClient, AgentError, OwnEntry, Registration};
use crate::backoff::{self, TokenBucket};

/// How long one blocking query on our own entry may wait. Short enough that a silently vanished
/// agent is noticed within a minute; long enough that an idle keeper costs one request a minute.
const OWN_ENTRY_WAIT: Duration = Duration::from_secs(60);
/// Retry delays while the agent is unreachable: the cap keeps re-registration within ~2 s of the
/// agent's return.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(2);
/// Failures between two warnings: with retries capped at ~2 s, about one warning a minute.
const WARN_EVERY: u32 = 40;

/// A running registration; call [`RegistrationKeeper::deregister`] on shutdown (async work
/// cannot run in `Drop`). Dropping it without that stops re-registration but leaves the entry to
/// the health check and `DeregisterCriticalServiceAfter`.
pub struct RegistrationKeeper {
    agent: AgentClient,
    service_id: String,
    task: JoinHandle<()>,
}

impl RegistrationKeeper {
    /// Registers `registration` in the background and keeps it registered.
    pub fn spawn(agent: AgentClient, registration: Registration) -> Self {
        let service_id = registration.id.clone();
        let task = tokio::spawn(keep_registered(agent.clone(), registration));
        RegistrationKeeper {
            agent,
            service_id,
            task,
        }
    }

    /// The Consul service ID of this instance.
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// Stops re-registering, then removes the instance from the agent. A failure is logged, not
    /// returned: the check and `DeregisterCriticalServiceAfter` clean up after us anyway.
    pub async fn deregister(self) {
        self.task.abort();
        match self.agent.deregister(&self.service_id).await {
            Ok(()) => info!(service_id = %self.service_id, "deregistered from Consul"),
            Err(err) => warn!(service_id = %self.service_id, "could not deregister: {err}"),
        }
    }
}

impl Drop for RegistrationKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_registered(agent: AgentClient, registration: Registration) {
    let id = registration.id.as_str();
    // Why the next step is to register, if it is. Register first even if an entry with our ID
    // exists: it may be a leftover of an earlier run of this instance with another check.
    let mut register_because: Option<&str> = Some("starting");
    let mut content_hash: Option<String> = None;
    let mut failures: u32 = 0;
    let mut polls = TokenBucket::new(5, 2);

    loop {
        if let Some(reason) = register_because {
            match agent.register(&registration).await {
                Ok(()) => {
                    info!(service_id = id, address = %registration.address, port = registration.port, reason, "registered with Consul");
                    register_because = None;
                    failures = 0;
                    content_hash = None;
                }
                Err(err) => {
                    failures += 1;
                    log_failure(failures, id, &err);
                    tokio::time::sleep(backoff::delay(failures, RETRY_BASE, RETRY_CAP)).await;
                }
            }
            continue;
        }

        match agent
            .own_entry(id, content_hash.as_deref(), OWN_ENTRY_WAIT)
            .await
        {
            Ok(OwnEntry::Present { content_hash: hash }) => {
                if failures > 0 {
                    info!(
                        service_id = id,
                        "Consul agent reachable again; registration intact"
                    );
                }
                failures = 0;
                content_hash = Some(hash);
                // A blocking query that keeps returning at once must not become a busy loop.
                tokio::time::sleep(polls.take(std::time::Instant::now())).await;
            }
            Ok(OwnEntry::Missing) => {
                warn!(
                    service_id = id,
                    "the Consul agent has forgotten this instance"
                );
                register_because = Some("the agent had forgotten it");
            }
            Err(err) => {
                failures += 1;
                content_hash = None;
                log_failure(failures, id, &err);
                tokio::time::sleep(backoff::delay(failures, RETRY_BASE, RETRY_CAP)).await;
                // The agent may come back with its state lost; registering is idempotent, so
                // do it rather than ask first.
                register_because = Some("the agent was unreachable");
            }
        }
    }
}

/// Warns on the first failure in a row and then about once a minute (a refused registration
/// is a configuration problem someone must see); the retries in between are debug noise.
fn log_failure(failures: u32, service_id: &str, err: &AgentError) {
    let what = match err {
        AgentError::Refused { status, .. } if status.as_u16() == 403 => {
            "Consul refused this instance (check CONSUL_HTTP_TOKEN), will keep retrying"
        }
        AgentError::Refused { .. } => "Consul refused this instance, will keep retrying",
        AgentError::Unreachable { .. } => "Consul agent unavailable, will keep retrying",
    };
    if failures == 1 || failures.is_multiple_of(WARN_EVERY) {
        warn!(service_id, failures, "{what}: {err}");
    } else {
        debug!(service_id, failures, "{what}: {err}");
    }
}
