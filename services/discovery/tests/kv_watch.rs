//! The KV watch against a real agent enforcing ACLs (keys put and deleted are seen, through the
//! token of the settings), and its index rules against a double that can move the index
//! backwards and send an oversized answer, which a real agent cannot be made to do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery::kv::{KvValue, KvWatch, MAX_ANSWER_BYTES};
use discovery::{ConsulArgs, ConsulSettings, WatchStatus};
use serde_json::json;
use testkit::{ConsulAgent, eventually};
use warp::Filter;
use warp::http::Response;

const PREFIX: &str = "gradebook/config/portal/";
const WITHIN: Duration = Duration::from_secs(10);

fn keys(watch: &KvWatch) -> Vec<(String, KvValue)> {
    let snapshot = watch.current();
    snapshot
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

#[tokio::test]
async fn keys_put_and_deleted_are_seen_through_the_token() {
    let token = "kv-watch-master-token";
    let agent = ConsulAgent::start_with_acl(token).await;
    let settings = ConsulSettings::from_args(&ConsulArgs {
        http_addr: agent.http_addr(),
        token: Some(token.into()),
        token_file: None,
    })
    .unwrap();
    let watch = KvWatch::spawn(&settings, PREFIX);
    eventually("the watch is live", WITHIN, || async {
        (watch.current().status == WatchStatus::Live).then_some(())
    })
    .await;
    assert!(keys(&watch).is_empty());

    agent.kv_put(&format!("{PREFIX}passing_score"), "70").await;
    agent.kv_put("gradebook/config/grading/other", "x").await;
    eventually("the key is seen", WITHIN, || async {
        (keys(&watch) == [("passing_score".to_owned(), KvValue::Text("70".into()))]).then_some(())
    })
    .await;
    let index = watch.current().index;
    assert!(index > 1, "{index}");

    agent.kv_delete(&format!("{PREFIX}passing_score")).await;
    eventually("the deletion is seen", WITHIN, || async {
        keys(&watch).is_empty().then_some(())
    })
    .await;

    // Without the token a default-deny agent answers as for an empty prefix (a 404, with no
    // sign that keys were left out): the watch is live and sees none, so the service's flags
    // apply. Hence the token in ConsulSettings.
    agent.kv_put(&format!("{PREFIX}passing_score"), "75").await;
    eventually("the key is seen again with the token", WITHIN, || async {
        (!keys(&watch).is_empty()).then_some(())
    })
    .await;
    let tokenless = KvWatch::spawn(&ConsulSettings::local(agent.http_addr()), PREFIX);
    eventually("a watch without the token is live", WITHIN, || async {
        (tokenless.current().status == WatchStatus::Live).then_some(())
    })
    .await;
    assert!(keys(&tokenless).is_empty());
}

/// What the double answers to the n-th query.
#[derive(Clone)]
enum Answer {
    /// 200 with this index and one key `passing_score` of this value.
    Key(u64, &'static str),
    /// 200 with this index and a body over the answer bound.
    Huge(u64),
}

type Seen = Arc<Mutex<Vec<Option<u64>>>>;

async fn consul_double(script: Vec<Answer>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let route = warp::path!("v1" / "kv" / ..)
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .then(move |query: std::collections::HashMap<String, String>| {
            let recorded = recorded.clone();
            let script = script.clone();
            async move {
                let n = {
                    let mut seen = recorded.lock().unwrap();
                    seen.push(query.get("index").map(|i| i.parse().unwrap()));
                    seen.len() - 1
                };
                let (index, body) = match script.get(n).cloned() {
                    Some(Answer::Key(index, value)) => {
                        use base64::Engine as _;
                        let value = base64::engine::general_purpose::STANDARD.encode(value);
                        let body =
                            json!([{"Key": format!("{PREFIX}passing_score"), "Value": value}]);
                        (index, body.to_string())
                    }
                    Some(Answer::Huge(index)) => (index, " ".repeat(MAX_ANSWER_BYTES + 1)),
                    None => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        unreachable!()
                    }
                };
                Response::builder()
                    .header("X-Consul-Index", index.to_string())
                    .body(body)
                    .unwrap()
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (address, seen)
}

#[tokio::test]
async fn the_index_is_followed_reset_when_it_goes_backwards_and_an_oversized_answer_is_ignored() {
    let (address, seen) = consul_double(vec![
        Answer::Key(5, "60"),
        Answer::Huge(7),      // ignored, but its index is followed
        Answer::Key(3, "70"), // backwards: start over
        Answer::Key(8, "80"),
    ])
    .await;
    let watch = KvWatch::spawn(&ConsulSettings::local(address), PREFIX);
    eventually("all scripted answers consumed", WITHIN, || async {
        (seen.lock().unwrap().len() == 5).then_some(())
    })
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        [None, Some(5), Some(7), None, Some(8)]
    );
    assert_eq!(
        keys(&watch),
        [("passing_score".to_owned(), KvValue::Text("80".into()))]
    );
    assert_eq!(watch.current().index, 8);
}
