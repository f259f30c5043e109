//! Keeps one instance registered with the local agent for as long as it serves.
//!
//! A dev agent, or one whose data dir was lost, forgets its services when it restarts. The keeper
//! holds a blocking query open on the instance's own agent entry, so it learns within
//! milliseconds that the entry is gone (the query returns 404, or the connection drops) and
//! registers again, retrying with jittered backoff while the agent is away. Consul being away
//! never stops the service: the keeper only logs.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
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
/// How long deregistering waits for a registration call in flight to be answered (the agent
/// client gives up on a call sooner); past it the keeper is aborted anyway.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// A running registration; call [`RegistrationKeeper::deregister`] on shutdown (async work
/// cannot run in `Drop`). Dropping it without that stops re-registration but leaves the entry to
/// the health check and `DeregisterCriticalServiceAfter`.
pub struct RegistrationKeeper {
    agent: AgentClient,
    service_id: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RegistrationKeeper {
    /// Registers `registration` in the background and keeps it registered.
    pub fn spawn(agent: AgentClient, registration: Registration) -> Self {
        let service_id = registration.id.clone();
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(keep_registered(agent.clone(), registration, stopping));
        RegistrationKeeper {
            agent,
            service_id,
            stop,
            task,
        }
    }

    /// The Consul service ID of this instance.
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// Stops re-registering, then removes the instance from the agent. A failure is logged, not
    /// returned: the check and `DeregisterCriticalServiceAfter` clean up after us anyway.
    ///
    /// The keeper stops between calls, never in the middle of one: a registration it had sent
    /// is answered first. Aborting it instead left that call to the agent, which could apply it
    /// after the deregistration and so list a stopped instance again.
    pub async fn deregister(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(STOP_LIMIT, &mut self.task)
            .await
            .is_err()
        {
            warn!(service_id = %self.service_id, "the registration keeper did not stop; aborted");
            self.task.abort();
        }
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

/// `work`, unless the keeper is asked to stop first (`None`). Only waits go through this: a
/// query or a pause may be dropped halfway, a registration may not.
async fn unless_stopped<T>(
    stopping: &mut watch::Receiver<bool>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        // A dropped sender means the keeper's owner is gone: stop too.
        _ = stopping.wait_for(|stop| *stop) => None,
        done = work => Some(done),
    }
}

async fn keep_registered(
    agent: AgentClient,
    registration: Registration,
    mut stopping: watch::Receiver<bool>,
) {
    let id = registration.id.as_str();
    // Why the next step is to register, if it is. Register first even if an entry with our ID
    // exists: it may be a leftover of an earlier run of this instance with another check.
    let mut register_because: Option<&str> = Some("starting");
    let mut content_hash: Option<String> = None;
    let mut failures: u32 = 0;
    let mut polls = TokenBucket::new(5, 2);

    loop {
        if *stopping.borrow() {
            return;
        }
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
                    let pause = backoff::delay(failures, RETRY_BASE, RETRY_CAP);
                    unless_stopped(&mut stopping, tokio::time::sleep(pause)).await;
                }
            }
            continue;
        }

        let Some(entry) = unless_stopped(
            &mut stopping,
            agent.own_entry(id, content_hash.as_deref(), OWN_ENTRY_WAIT),
        )
        .await
        else {
            return;
        };
        match entry {
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
                let pause = polls.take(tokio::time::Instant::now());
                unless_stopped(&mut stopping, tokio::time::sleep(pause)).await;
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
                let pause = backoff::delay(failures, RETRY_BASE, RETRY_CAP);
                unless_stopped(&mut stopping, tokio::time::sleep(pause)).await;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use warp::Filter;

    use super::*;
    use crate::agent::HttpCheck;
    use crate::consul::ConsulSettings;

    /// What the double agent holds, and how many registrations it is still applying.
    #[derive(Default)]
    struct AgentState {
        registered: bool,
        applying: usize,
    }

    /// An agent that takes 300 ms to apply a registration, and applies it even when the caller
    /// hangs up meanwhile, as Consul's agent does (its handler does not watch the connection).
    /// A real agent cannot be made that slow on purpose, hence a double.
    async fn slow_agent(state: Arc<Mutex<AgentState>>) -> SocketAddr {
        let on_register = state.clone();
        let register = warp::put()
            .and(warp::path!("v1" / "agent" / "service" / "register"))
            .then(move || {
                let state = on_register.clone();
                async move {
                    state.lock().unwrap().applying += 1;
                    let applied = tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let mut state = state.lock().unwrap();
                        state.registered = true;
                        state.applying -= 1;
                    });
                    let _ = applied.await;
                    warp::reply()
                }
            });
        let deregister = warp::put()
            .and(warp::path!(
                "v1" / "agent" / "service" / "deregister" / String
            ))
            .map(move |_id: String| {
                state.lock().unwrap().registered = false;
                warp::reply()
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            warp::serve(register.or(deregister))
                .incoming(listener)
                .run(),
        );
        addr
    }

    fn registration() -> Registration {
        Registration {
            id: "grading-127.0.0.1-6100".into(),
            name: "grading".into(),
            tags: vec![],
            address: "127.0.0.1".into(),
            port: 6100,
            meta: BTreeMap::new(),
            check: HttpCheck {
                name: "HTTP /health".into(),
                http: "http://127.0.0.1:6100/health".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                deregister_critical_service_after: Duration::from_secs(60),
                status: "passing",
            },
        }
    }

    async fn until(what: &str, state: &Mutex<AgentState>, done: impl Fn(&AgentState) -> bool) {
        let started = Instant::now();
        while !done(&state.lock().unwrap()) {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_deregistration_during_a_registration_is_the_last_word() {
        let state = Arc::new(Mutex::new(AgentState::default()));
        let addr = slow_agent(state.clone()).await;
        let agent = AgentClient::new(ConsulSettings::local(format!("http://{addr}")));
        let keeper = RegistrationKeeper::spawn(agent, registration());
        until("the registration reaches the agent", &state, |s| {
            s.applying == 1
        })
        .await;

        keeper.deregister().await;
        until("the agent applied every call", &state, |s| s.applying == 0).await;
        assert!(
            !state.lock().unwrap().registered,
            "the agent lists the instance after it deregistered"
        );
    }
}
