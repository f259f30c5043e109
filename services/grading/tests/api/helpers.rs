//! What every API test of grading starts from: the real app, built and run in this process on
//! port 0 against a real Consul agent, on either database.

use clap::Parser;
use grading_service::App;
use grading_service::config::Config;
use testkit::{ConsulAgent, Postgres, RunningApp};

/// Where the instances of one test keep students and grades.
pub enum Database {
    /// `--data-dir` in a tempdir: the embedded default.
    Sqlite(tempfile::TempDir),
    /// `--database-url` of a PostgreSQL server of the test's own.
    Postgres(Postgres),
}

impl Database {
    pub fn sqlite() -> Database {
        Database::Sqlite(tempfile::tempdir().unwrap())
    }

    /// `None` when PostgreSQL is not installed and the test is skipped (testkit warns).
    pub async fn postgres() -> Option<Database> {
        Postgres::start().await.map(Database::Postgres)
    }

    /// The flag that points grading at this database.
    fn args(&self) -> [String; 2] {
        match self {
            Database::Sqlite(dir) => [
                "--data-dir".to_owned(),
                dir.path().join("grading").display().to_string(),
            ],
            Database::Postgres(server) => ["--database-url".to_owned(), server.url()],
        }
    }
}

/// Builds grading on 127.0.0.1:0 with `db`, registered with `agent`, and runs it on a task:
/// the only place the API tests build the app.
pub async fn spawn_app(agent: &ConsulAgent, db: &Database) -> RunningApp {
    let mut args = vec![
        "grading-service".to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--consul-http-addr".to_owned(),
        agent.http_addr(),
    ];
    args.extend(db.args());
    let config = Config::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
    let app = App::build(config)
        .await
        .unwrap_or_else(|e| panic!("grading cannot start: {e}"));
    let addr = app.local_addr();
    RunningApp::spawn(addr, move |shutdown| app.run(shutdown))
}

/// Stops the app as SIGTERM would, and checks it left Consul's catalogue.
pub async fn stop(agent: &ConsulAgent, grading: RunningApp) {
    grading.stop().await;
    assert!(agent.passing_instances("grading").await.is_empty());
    assert!(
        agent.agent_services().await.is_empty(),
        "still registered after its stop"
    );
}
