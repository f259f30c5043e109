//! A service's `App` run in the test's own process, for API tests that need no process of their
//! own (no signal, crash or exit code): built on port 0, so no port is chosen before it is bound.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a stopped app may take to deregister and drain.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What an app's `run` is given to wait on: it resolves when the test stops the app, as
/// SIGTERM's future does in the binary.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An app serving on a task of the test's runtime; stopped through the same shutdown path as
/// SIGTERM (deregister, drain, return), or aborted like a crash when dropped.
#[derive(Debug)]
pub struct RunningApp {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningApp {
    /// Runs `run(shutdown)` on a task: `addr` is where the built app is bound, `run` its
    /// `App::run`.
    pub fn spawn<F, Fut>(addr: SocketAddr, run: F) -> RunningApp
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            // A dropped sender stops the app too.
            let _ = stopped.await;
        });
        RunningApp {
            addr,
            stop: Some(stop),
            task: tokio::spawn(run(shutdown)),
        }
    }

    /// The address the app is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `"http://127.0.0.1:<port>"`, the prefix for requests to the app.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resolves the app's shutdown future and waits (up to 15 s) for `run` to return: it has
    /// deregistered and drained by then. Panics if it does not return or panicked.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(STOP_TIMEOUT, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("the app at {} failed: {err}", self.addr),
            Err(_) => panic!(
                "the app at {} still running {STOP_TIMEOUT:?} after its stop",
                self.addr
            ),
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
