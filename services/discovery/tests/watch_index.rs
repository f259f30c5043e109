//! The blocking-query rules of the watch, shown against a local HTTP double of Consul's health
//! endpoint: a real agent cannot be made to move its index backwards or fail on demand. The same
//! loop is shown against a real agent in service-runtime's `tests/discovery.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery::{ConsulSettings, ProviderWatch, WatchStatus};
use serde_json::json;
use testkit::eventually;
use warp::Filter;
use warp::http::Response;

/// What the double answers to the n-th query.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 with this `X-Consul-Index`, listing one instance on this port.
    Index(u64, u16),
    /// 500, as an agent that lost its servers does.
    Fail,
}

/// The `index` query parameter of every request the double received, in order.
type Seen = Arc<Mutex<Vec<Option<u64>>>>;

/// Serves `script` in order, then holds every further query open (a blocking query with nothing
/// new to say).
async fn consul_double(script: Vec<Answer>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let route = warp::path!("v1" / "health" / "service" / String)
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .then(
            move |_service: String, query: std::collections::HashMap<String, String>| {
                let recorded = recorded.clone();
                let script = script.clone();
                async move {
                    let n = {
                        let mut seen = recorded.lock().unwrap();
                        seen.push(query.get("index").map(|i| i.parse().unwrap()));
                        seen.len() - 1
                    };
                    assert_eq!(query.get("passing").map(String::as_str), Some("true"));
                    match script.get(n).copied() {
                        Some(Answer::Index(index, port)) => Response::builder()
                            .header("X-Consul-Index", index.to_string())
                            .body(node_list(port).to_string())
                            .unwrap(),
                        Some(Answer::Fail) => Response::builder()
                            .status(500)
                            .body("No cluster leader".to_owned())
                            .unwrap(),
                        None => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            unreachable!()
                        }
                    }
                }
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (address, seen)
}

fn node_list(port: u16) -> serde_json::Value {
    json!([{
        "Node": {"ID": "n1", "Node": "node-1", "Address": "127.0.0.1", "Datacenter": "dc1"},
        "Service": {"ID": format!("grading-127.0.0.1-{port}"), "Service": "grading", "Address": "127.0.0.1", "Port": port, "Tags": []}
    }])
}

fn seen_now(seen: &Seen) -> Vec<Option<u64>> {
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn the_index_is_sent_back_reset_when_it_goes_backwards_and_never_below_one() {
    let (address, seen) = consul_double(vec![
        Answer::Index(5, 6000),
        Answer::Index(7, 6001),
        Answer::Index(3, 6001), // backwards: start over
        Answer::Index(0, 6001), // below 1: send 1
        Answer::Index(9, 6002),
    ])
    .await;
    let watch = ProviderWatch::spawn(&ConsulSettings::local(address), "grading");
    eventually(
        "all scripted answers consumed",
        Duration::from_secs(5),
        || async { (seen_now(&seen).len() == 6).then_some(()) },
    )
    .await;
    assert_eq!(
        seen_now(&seen),
        [None, Some(5), Some(7), None, Some(1), Some(9)]
    );
    let set = watch.current();
    assert_eq!(set.providers[0].address, "127.0.0.1:6002");
    assert_eq!(set.status, WatchStatus::Live);
    // 6000, then 6001, then 6002: three changes published, the repeats of 6001 were not.
    assert_eq!(set.generation, 3);
}

#[tokio::test]
async fn errors_keep_the_last_set_back_off_and_recover() {
    let mut script = vec![Answer::Index(5, 6000)];
    script.extend([Answer::Fail; 4]);
    script.push(Answer::Index(6, 6001));
    let (address, seen) = consul_double(script).await;
    let watch = ProviderWatch::spawn(&ConsulSettings::local(address), "grading");

    eventually(
        "the first failure marks the set stale",
        Duration::from_secs(5),
        || async { matches!(watch.current().status, WatchStatus::Stale { .. }).then_some(()) },
    )
    .await;
    assert_eq!(
        watch.current().providers[0].address,
        "127.0.0.1:6000",
        "last known set kept"
    );

    eventually(
        "recovered after the failures",
        Duration::from_secs(10),
        || async {
            let set = watch.current();
            (set.status == WatchStatus::Live
                && set.providers.iter().any(|p| p.address == "127.0.0.1:6001"))
            .then_some(())
        },
    )
    .await;
    // 6000, which Consul no longer lists after the outage, stays published for the rejoin grace
    // (its end is timed on paused time in watch.rs's unit tests).
    let addresses: Vec<String> = watch
        .current()
        .providers
        .iter()
        .map(|p| p.address.clone())
        .collect();
    assert_eq!(addresses, ["127.0.0.1:6000", "127.0.0.1:6001"]);
    assert_eq!(watch.current().failed_polls, 4);
    // After an error the index is forgotten: the retry is a fresh, non-blocking read.
    assert_eq!(seen_now(&seen)[1..6], [Some(5), None, None, None, None]);
}
