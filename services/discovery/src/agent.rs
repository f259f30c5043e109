//! A typed client for the parts of Consul's agent API that rs-consul does not cover: registering
//! and deregistering a service instance, and watching our own registration.
//!
//! Registration goes through the *agent* (`/v1/agent/service/register`), never the catalogue:
//! only agent registrations get anti-entropy and health checks run by the local agent.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Serialize;

use crate::consul::ConsulSettings;

/// How long a plain (non-blocking) agent call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One service instance as the agent should know it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub check: HttpCheck,
}

/// The HTTP health check the agent runs against the instance.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpCheck {
    pub name: String,
    #[serde(rename = "HTTP")]
    pub http: String,
    #[serde(serialize_with = "as_go_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "as_go_duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "as_go_duration")]
    pub deregister_critical_service_after: Duration,
    /// Initial status. An instance registers only once it serves, so it may start `passing` and
    /// be visible at once instead of one check interval later; the check keeps it honest.
    pub status: &'static str,
}

fn as_go_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// What the agent said about one of its own service entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnEntry {
    /// Registered; the content hash to send back for the next blocking call.
    Present { content_hash: String },
    /// The agent does not know the service ID (never registered, or forgotten).
    Missing,
}

/// Why an agent call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Consul agent at {address} unreachable: {source}")]
    Unreachable {
        address: String,
        source: reqwest::Error,
    },
    #[error("Consul agent answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
}

/// A client for the local agent; cheap to clone, its connections are pooled.
#[derive(Debug, Clone)]
pub struct AgentClient {
    settings: ConsulSettings,
    http: reqwest::Client,
}

impl AgentClient {
    /// A client with its own pooled connection set, never going through an HTTP proxy.
    pub fn new(settings: ConsulSettings) -> Self {
        AgentClient {
            settings,
            http: crate::consul::agent_http_client(),
        }
    }

    /// Registers (or replaces) an instance with its check.
    pub async fn register(&self, registration: &Registration) -> Result<(), AgentError> {
        let url = format!(
            "{}/v1/agent/service/register?replace-existing-checks=true",
            self.settings.address
        );
        let request = self.http.put(url).json(registration).timeout(CALL_TIMEOUT);
        self.call(request).await.map(drop)
    }

    /// Removes an instance and its checks from the agent.
    pub async fn deregister(&self, service_id: &str) -> Result<(), AgentError> {
        let url = format!(
            "{}/v1/agent/service/deregister/{service_id}",
            self.settings.address
        );
        self.call(self.http.put(url).timeout(CALL_TIMEOUT))
            .await
            .map(drop)
    }

    /// Asks whether the agent still has `service_id`. With a `content_hash` from a previous answer
    /// this is a blocking query: the agent answers when the entry changes or after `wait`.
    pub async fn own_entry(
        &self,
        service_id: &str,
        content_hash: Option<&str>,
        wait: Duration,
    ) -> Result<OwnEntry, AgentError> {
        let mut url = format!("{}/v1/agent/service/{service_id}", self.settings.address);
        let mut timeout = CALL_TIMEOUT;
        if let Some(hash) = content_hash {
            url.push_str(&format!("?hash={hash}&wait={}ms", wait.as_millis()));
            // Consul adds up to wait/16 of jitter to a blocking call: never cut it short.
            timeout += wait + wait / 16;
        }
        let response = self.send(self.http.get(url).timeout(timeout)).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(OwnEntry::Missing);
        }
        let response = check_status(response).await?;
        let content_hash = response
            .headers()
            .get("X-Consul-ContentHash")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(OwnEntry::Present { content_hash })
    }

    async fn call(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AgentError> {
        check_status(self.send(request).await?).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AgentError> {
        let request = match &self.settings.token {
            Some(token) => request.header("X-Consul-Token", token.expose()),
            None => request,
        };
        request
            .send()
            .await
            .map_err(|source| AgentError::Unreachable {
                address: self.settings.address.clone(),
                source,
            })
    }
}

async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, AgentError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(AgentError::Refused {
        status,
        body: body.trim().chars().take(500).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_serializes_as_the_agent_api_expects() {
        let registration = Registration {
            id: "log-127.0.0.1-4000".into(),
            name: "log".into(),
            tags: vec!["http".into()],
            address: "127.0.0.1".into(),
            port: 4000,
            meta: BTreeMap::from([("version".into(), "0.1.0".into())]),
            check: HttpCheck {
                name: "HTTP /health".into(),
                http: "http://127.0.0.1:4000/health".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(800),
                deregister_critical_service_after: Duration::from_secs(60),
                status: "passing",
            },
        };
        let json = serde_json::to_value(&registration).unwrap();
        assert_eq!(json["ID"], "log-127.0.0.1-4000");
        assert_eq!(json["Meta"]["version"], "0.1.0");
        assert_eq!(json["Check"]["HTTP"], "http://127.0.0.1:4000/health");
        assert_eq!(json["Check"]["Interval"], "1000ms");
        assert_eq!(json["Check"]["DeregisterCriticalServiceAfter"], "60000ms");
        assert_eq!(json["Check"]["Status"], "passing");
    }
}
