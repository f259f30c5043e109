//! Set-up shared by the runtime's test binaries: an instance on the real runtime, registered in a
//! real agent, serving test routes until told to stop.

use discovery::ConsulSettings;
use service_runtime::{Service, ServiceDefinition};
use testkit::ConsulAgent;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::Filter;
use warp::reply::Response;

/// `name` with `tags`, bound to a free loopback port and registering with `agent`.
pub async fn bind(agent: &ConsulAgent, name: &'static str, tags: &[&str]) -> Service {
    Service::bind(ServiceDefinition {
        name,
        version: "9.9.9-test",
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        consul: ConsulSettings::local(agent.http_addr()),
        allowed_hosts: Vec::new(),
    })
    .await
    .expect("binds")
}

/// Runs `service` with `routes` until the returned sender is sent to or dropped.
pub fn run_until_stopped<F>(service: Service, routes: F) -> (oneshot::Sender<()>, JoinHandle<()>)
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(service.run(routes, async {
        let _ = stopped.await;
    }));
    (stop, task)
}
