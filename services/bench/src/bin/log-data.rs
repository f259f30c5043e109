//! `log-data`: writes a log store's records file (`DIR/records.jsonl`) of N records in the
//! store's own format, quickly, for measuring how the log's cost grows with its data.
//!
//! The records are those of a busy system: four services take turns, one record in every
//! 10,000 is from the service `rare` (so `GET /log?service=rare` finds few, spread over the
//! whole file), one in 50 is a warning and one in 500 an error. Each is serialized with the log
//! service's own `Record`, so the file is what the service would have written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Parser;
use log_service::record::{Level, Record};

/// One record in this many is from the service `rare`.
const RARE_EVERY: u64 = 10_000;

/// Writes N records to DIR/records.jsonl (replacing it).
#[derive(Parser)]
struct Args {
    /// How many records.
    #[arg(long)]
    records: u64,
    /// The log store's data directory; created if missing.
    #[arg(long)]
    dir: PathBuf,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let path = args.dir.join("records.jsonl");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
    let services = ["grading", "portal", "log", "consul-watch"];
    // One record a millisecond, ending now.
    let start = SystemTime::now() - Duration::from_millis(args.records);
    for n in 0..args.records {
        let service = if n % RARE_EVERY == RARE_EVERY / 2 {
            "rare"
        } else {
            services[(n % 4) as usize]
        };
        let level = match n {
            n if n % 500 == 7 => Level::Error,
            n if n % 50 == 3 => Level::Warn,
            _ => Level::Info,
        };
        let record = Record {
            time: humantime::format_rfc3339_millis(start + Duration::from_millis(n)).to_string(),
            service: service.to_owned(),
            level,
            message: format!(
                "GET /students/{} answered 200 in {}.{:03} ms (request {n}, from 10.0.{}.{})",
                n % 9973,
                n % 7,
                n % 1000,
                n % 200,
                n % 250
            ),
            trace_id: (n % 3 == 0).then(|| format!("{:032x}", n + 1)),
        };
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    eprintln!("log-data: {} records in {}", args.records, path.display());
    Ok(())
}
