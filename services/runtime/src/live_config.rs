//! Settings that change while a service runs: read from Consul KV under
//! `gradebook/config/common/` and `gradebook/config/<service>/`, layered over the values of the
//! flags and environment, and published to the request path as an `Arc` behind a
//! `tokio::sync::watch` (a reader takes a brief read lock to clone the `Arc`, never holds it).
//!
//! Precedence, lowest first: built-in default < environment variable < command-line flag < KV
//! common < KV service-specific. A key deleted from KV falls back to the value below it.
//!
//! Each key is judged on its own: a value that does not parse, is out of range, is too large or
//! sits under an unknown key is refused with a warning naming the key and the problem, and that
//! key keeps its last good value while the other keys apply. Settings here have no rules across
//! keys, so one typo has no reason to hold back an unrelated change.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::ArgMatches;
use clap::parser::ValueSource;
use discovery::ConsulSettings;
use discovery::kv::{KvEntry, KvSnapshot, KvValue, KvWatch, MAX_VALUE_BYTES, WatchStatus};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};
use warp::Filter;
use warp::reply::Reply;

use crate::telemetry::{ShipLevel, parse_ship_level};

/// Where every service's keys live in Consul KV.
pub const KV_ROOT: &str = "gradebook/config/";
/// The prefix shared by every service.
pub const COMMON_PREFIX: &str = "gradebook/config/common/";

/// A group of settings that can change live: each key parses from and prints to text.
pub trait Settings: Clone + Send + Sync + 'static {
    /// The keys, as named in KV (without prefix) and in `/status/config`.
    const KEYS: &'static [&'static str];
    /// Sets `key` (one of [`Settings::KEYS`]) from `text`, or says what is wrong with `text`.
    fn set(&mut self, key: &str, text: &str) -> Result<(), String>;
    /// The value of `key` as text that [`Settings::set`] accepts.
    fn text(&self, key: &str) -> String;
}

/// No settings of its own: for a service that only takes the common ones.
impl Settings for () {
    const KEYS: &'static [&'static str] = &[];
    fn set(&mut self, key: &str, _: &str) -> Result<(), String> {
        Err(format!("unknown key {key:?}"))
    }
    fn text(&self, _: &str) -> String {
        String::new()
    }
}

/// The settings every service takes, under `gradebook/config/common/` (or overridden under its
/// own prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonSettings {
    /// Least severe level shipped to the log service (no effect on the log service itself).
    pub ship_level: tracing_subscriber::filter::LevelFilter,
}

impl CommonSettings {
    /// The values before KV: `GRADEBOOK_SHIP_LEVEL`, else `info`.
    pub fn from_env() -> CommonSettings {
        CommonSettings {
            ship_level: crate::telemetry::ship_level_from_env(),
        }
    }
}

impl Settings for CommonSettings {
    const KEYS: &'static [&'static str] = &["ship_level"];
    fn set(&mut self, key: &str, text: &str) -> Result<(), String> {
        match key {
            "ship_level" => self.ship_level = parse_ship_level(text)?,
            _ => return Err(format!("unknown key {key:?}")),
        }
        Ok(())
    }
    fn text(&self, key: &str) -> String {
        match key {
            "ship_level" => self.ship_level.to_string().to_lowercase(),
            _ => String::new(),
        }
    }
}

/// The settings a request sees: the common ones and the service's own.
#[derive(Debug, Clone)]
pub struct Effective<S> {
    pub common: CommonSettings,
    pub service: S,
}

impl<S: Settings> Effective<S> {
    fn set(&mut self, key: &str, text: &str) -> Result<(), String> {
        if CommonSettings::KEYS.contains(&key) {
            self.common.set(key, text)
        } else {
            self.service.set(key, text)
        }
    }

    fn text(&self, key: &str) -> String {
        if CommonSettings::KEYS.contains(&key) {
            self.common.text(key)
        } else {
            self.service.text(key)
        }
    }

    fn keys() -> impl Iterator<Item = &'static str> {
        CommonSettings::KEYS.iter().chain(S::KEYS).copied()
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Default,
    Env,
    Flag,
    /// Flag, environment or default, for settings built without their command line (tests).
    Flags,
    KvCommon,
    KvService,
}

impl Origin {
    /// The name `/status/config` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Default => "default",
            Origin::Env => "env",
            Origin::Flag => "flag",
            Origin::Flags => "flags",
            Origin::KvCommon => "kv-common",
            Origin::KvService => "kv-service",
        }
    }

    fn is_kv(self) -> bool {
        matches!(self, Origin::KvCommon | Origin::KvService)
    }
}

/// Where each flag-backed setting came from, by clap's argument id (the field name).
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<String, Origin>);

impl Origins {
    /// The origins clap recorded for `keys` (argument ids equal to the KV key names).
    pub fn from_matches(matches: &ArgMatches, keys: &[&str]) -> Origins {
        let origins = keys
            .iter()
            .filter_map(|key| {
                let origin = match matches.try_get_raw(key).ok()?.is_some() {
                    true => match matches.value_source(key)? {
                        ValueSource::CommandLine => Origin::Flag,
                        ValueSource::EnvVariable => Origin::Env,
                        _ => Origin::Default,
                    },
                    false => Origin::Default,
                };
                Some((key.to_string(), origin))
            })
            .collect();
        Origins(origins)
    }

    fn of(&self, key: &str) -> Origin {
        match self.0.get(key) {
            Some(origin) => *origin,
            // Not a flag (the ship level): the environment or its default.
            None if CommonSettings::KEYS.contains(&key) => {
                match std::env::var_os(crate::telemetry::SHIP_LEVEL_ENV) {
                    Some(_) => Origin::Env,
                    None => Origin::Default,
                }
            }
            None => Origin::Flags,
        }
    }
}

/// One key refused from KV, as `/status/config` shows the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The full KV key.
    pub key: String,
    /// What is wrong with the value, and that the last good one is kept.
    pub reason: String,
    /// The Consul index at which it was refused.
    pub index: u64,
}

/// One setting as `/status/config` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingReport {
    pub value: String,
    pub from: Origin,
}

/// What `GET /status/config` answers, and `/health` summarises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigReport {
    /// `consul-kv` when at least one setting comes from KV, else `flags`.
    pub source: &'static str,
    /// The highest `X-Consul-Index` of the two prefixes (0 before Consul answered).
    pub index: u64,
    /// `starting`, `live`, or `unreachable` (the last values from KV are kept).
    pub consul: &'static str,
    /// The prefixes read, lowest precedence first.
    pub prefixes: [String; 2],
    pub settings: BTreeMap<&'static str, SettingReport>,
    pub last_refused: Option<Refusal>,
}

/// The `"config"` member of `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSummary {
    pub source: &'static str,
    pub index: u64,
}

/// A handle on the report, for the routes of the runtime (`/health`, `/status/config`) and a
/// status page; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConfigStatus(watch::Receiver<Arc<ConfigReport>>);

impl ConfigStatus {
    /// The report as it stands.
    pub fn report(&self) -> Arc<ConfigReport> {
        self.0.borrow().clone()
    }

    /// Source and index, for `/health`.
    pub fn summary(&self) -> ConfigSummary {
        let report = self.0.borrow();
        ConfigSummary {
            source: report.source,
            index: report.index,
        }
    }

    /// A status for a service that reads no KV: everything from flags, index 0.
    pub fn flags_only() -> ConfigStatus {
        let report = ConfigReport {
            source: "flags",
            index: 0,
            consul: "starting",
            prefixes: [String::new(), String::new()],
            settings: BTreeMap::new(),
            last_refused: None,
        };
        ConfigStatus(watch::channel(Arc::new(report)).1)
    }
}

/// `GET /status/config`: the effective settings, where each came from, the index and the last
/// refused key.
pub fn status_route(
    status: ConfigStatus,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("status" / "config")
        .and(warp::get())
        .map(move || warp::reply::json(&*status.report()).into_response())
}

/// The live settings of one service; cheap to clone. The watches stop once the last clone and
/// the last [`ConfigStatus`] are gone.
#[derive(Debug, Clone)]
pub struct LiveConfig<S> {
    effective: watch::Receiver<Arc<Effective<S>>>,
    status: ConfigStatus,
}

impl<S: Settings + std::fmt::Debug> LiveConfig<S> {
    /// Starts watching `service`'s prefix and the common one through the agent of `consul`,
    /// over `base` (the values of flags, environment and defaults, with their `origins`).
    pub fn spawn(
        consul: &ConsulSettings,
        service: &str,
        base: Effective<S>,
        origins: Origins,
    ) -> LiveConfig<S> {
        let own_prefix = format!("{KV_ROOT}{service}/");
        let layers = Layers {
            base,
            origins,
            prefixes: [COMMON_PREFIX.to_owned(), own_prefix.clone()],
        };
        let common = KvWatch::spawn(consul, COMMON_PREFIX);
        let own = KvWatch::spawn(consul, &own_prefix);
        let first = layers.resolve(&common.current(), &own.current(), None);
        let (effective_tx, effective) = watch::channel(Arc::new(first.effective.clone()));
        let (report_tx, report) = watch::channel(Arc::new(first.report.clone()));
        tokio::spawn(follow(layers, common, own, first, effective_tx, report_tx));
        LiveConfig {
            effective,
            status: ConfigStatus(report),
        }
    }

    /// Settings that never change, for tests and tools without Consul: `base` from flags.
    pub fn fixed(base: Effective<S>, origins: Origins) -> LiveConfig<S> {
        let layers = Layers {
            base,
            origins,
            prefixes: [String::new(), String::new()],
        };
        let none = KvSnapshot::starting;
        let resolved = layers.resolve(&none(""), &none(""), None);
        LiveConfig {
            effective: watch::channel(Arc::new(resolved.effective)).1,
            status: ConfigStatus(watch::channel(Arc::new(resolved.report)).1),
        }
    }

    /// The settings as they stand: an `Arc` clone, no allocation.
    pub fn current(&self) -> Arc<Effective<S>> {
        self.effective.borrow().clone()
    }

    /// The report handle for `/health`, `/status/config` and status pages.
    pub fn status(&self) -> ConfigStatus {
        self.status.clone()
    }

    /// Keeps `level` (the shipping filter) at the effective `ship_level` for as long as the
    /// service runs.
    pub fn drive_ship_level(&self, level: ShipLevel) {
        let mut effective = self.effective.clone();
        tokio::spawn(async move {
            loop {
                let wanted = effective.borrow_and_update().common.ship_level;
                level.set(wanted);
                if effective.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// What the KV layers go over, and the names of the prefixes.
struct Layers<S> {
    base: Effective<S>,
    origins: Origins,
    prefixes: [String; 2],
}

/// One resolution of the layers: the settings, their report, and the refusals behind it.
#[derive(Clone)]
struct Resolved<S> {
    effective: Effective<S>,
    report: ConfigReport,
    refusals: Vec<(String, String)>,
}

impl<S: Settings> Layers<S> {
    /// The settings for these KV snapshots; a refused key keeps its value in `previous` (the
    /// base on the first resolution).
    fn resolve(
        &self,
        common: &KvSnapshot,
        own: &KvSnapshot,
        previous: Option<&Resolved<S>>,
    ) -> Resolved<S> {
        let index = common.index.max(own.index);
        let mut effective = self.base.clone();
        let mut settings = BTreeMap::new();
        let mut refusals = Vec::new();
        let previous_effective = previous.map_or(&self.base, |p| &p.effective);

        // Keys nobody takes are refused, whatever their value.
        let unknown = common
            .entries
            .iter()
            .filter(|e| !CommonSettings::KEYS.contains(&e.key.as_str()))
            .map(|e| format!("{}{}", self.prefixes[0], e.key))
            .chain(
                own.entries
                    .iter()
                    .filter(|e| !Effective::<S>::keys().any(|k| k == e.key))
                    .map(|e| format!("{}{}", self.prefixes[1], e.key)),
            );
        for key in unknown {
            refusals.push((key, "unknown key: no setting of this name here".to_owned()));
        }

        for key in Effective::<S>::keys() {
            let mut origin = self.origins.of(key);
            // The highest layer that has the key decides; if its value is refused the key keeps
            // its last good value rather than falling to a lower layer.
            let candidate = find(own, key)
                .map(|e| (e, Origin::KvService, &self.prefixes[1]))
                .or_else(|| {
                    CommonSettings::KEYS
                        .contains(&key)
                        .then(|| find(common, key))
                        .flatten()
                        .map(|e| (e, Origin::KvCommon, &self.prefixes[0]))
                });
            if let Some((entry, kv_origin, prefix)) = candidate {
                match value_text(&entry.value).and_then(|text| effective.set(key, text.trim())) {
                    Ok(()) => origin = kv_origin,
                    Err(problem) => {
                        refusals.push((format!("{prefix}{key}"), problem));
                        let last_good = previous_effective.text(key);
                        effective
                            .set(key, &last_good)
                            .expect("a value printed by the settings parses back");
                        origin = previous
                            .and_then(|p| p.report.settings.get(key))
                            .map_or(origin, |s| s.from);
                    }
                }
            }
            settings.insert(
                key,
                SettingReport {
                    value: effective.text(key),
                    from: origin,
                },
            );
        }

        let source = match settings.values().any(|s| s.from.is_kv()) {
            true => "consul-kv",
            false => "flags",
        };
        let consul = match (common.status, own.status) {
            (WatchStatus::Stale { .. }, _) | (_, WatchStatus::Stale { .. }) => "unreachable",
            (WatchStatus::Live, WatchStatus::Live) => "live",
            _ => "starting",
        };
        let mut last_refused = previous.and_then(|p| p.report.last_refused.clone());
        let known_before = previous.map_or(&[][..], |p| &p.refusals[..]);
        for (key, problem) in &refusals {
            if !known_before.contains(&(key.clone(), problem.clone())) {
                let reason = format!("{problem}; the last good value is kept");
                warn!(key = %key, "configuration refused: {reason}");
                last_refused = Some(Refusal {
                    key: key.clone(),
                    reason,
                    index,
                });
            }
        }
        Resolved {
            effective,
            report: ConfigReport {
                source,
                index,
                consul,
                prefixes: self.prefixes.clone(),
                settings,
                last_refused,
            },
            refusals,
        }
    }
}

fn find<'a>(snapshot: &'a KvSnapshot, key: &str) -> Option<&'a KvEntry> {
    snapshot.entries.iter().find(|entry| entry.key == key)
}

/// The text of a value, or why it is none.
fn value_text(value: &KvValue) -> Result<&str, String> {
    match value {
        KvValue::Text(text) => Ok(text),
        KvValue::TooLarge(size) => Err(format!(
            "a value of {size} bytes, over the limit of {MAX_VALUE_BYTES}"
        )),
        KvValue::NotText => Err("a value that is not UTF-8 text".to_owned()),
    }
}

/// Resolves the layers again at every change of either prefix and publishes what changed.
async fn follow<S: Settings + std::fmt::Debug>(
    layers: Layers<S>,
    common: KvWatch,
    own: KvWatch,
    mut resolved: Resolved<S>,
    effective: watch::Sender<Arc<Effective<S>>>,
    report: watch::Sender<Arc<ConfigReport>>,
) {
    let mut common_rx = common.subscribe();
    let mut own_rx = own.subscribe();
    loop {
        tokio::select! {
            changed = common_rx.changed() => if changed.is_err() { return },
            changed = own_rx.changed() => if changed.is_err() { return },
            // Running while anyone reads the settings or the report (`/health` does).
            () = async { effective.closed().await; report.closed().await } => return,
        }
        let common_now = common_rx.borrow_and_update().clone();
        let own_now = own_rx.borrow_and_update().clone();
        let next = layers.resolve(&common_now, &own_now, Some(&resolved));
        if next.report.settings != resolved.report.settings {
            let changes: Vec<String> = next
                .report
                .settings
                .iter()
                .filter(|(key, s)| resolved.report.settings.get(*key) != Some(*s))
                .map(|(key, s)| format!("{key}={} ({})", s.value, s.from.as_str()))
                .collect();
            info!(
                index = next.report.index,
                "configuration: {}",
                changes.join(" ")
            );
            effective.send_replace(Arc::new(next.effective.clone()));
        }
        if next.report != resolved.report {
            report.send_replace(Arc::new(next.report.clone()));
        }
        resolved = next;
    }
}

/// A non-empty text of at most `max` characters, for names shown on pages.
pub fn parse_bounded_text(text: &str, max: usize) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty value".to_owned());
    }
    if text.chars().count() > max {
        return Err(format!("longer than {max} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err("a control character in the value".to_owned());
    }
    Ok(text.to_owned())
}

/// A whole number within `range`.
pub fn parse_in_range<T>(text: &str, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let value: T = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if !range.contains(&value) {
        return Err(format!(
            "{value} is out of range {}..={}",
            range.start(),
            range.end()
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::filter::LevelFilter;

    #[derive(Debug, Clone, PartialEq)]
    struct Page {
        size: u32,
    }

    impl Settings for Page {
        const KEYS: &'static [&'static str] = &["page_size"];
        fn set(&mut self, key: &str, text: &str) -> Result<(), String> {
            match key {
                "page_size" => self.size = parse_in_range(text, 1..=200)?,
                _ => return Err(format!("unknown key {key:?}")),
            }
            Ok(())
        }
        fn text(&self, _: &str) -> String {
            self.size.to_string()
        }
    }

    fn layers() -> Layers<Page> {
        let matches = clap::Command::new("t")
            .arg(clap::Arg::new("page_size").long("page-size"))
            .get_matches_from(["t", "--page-size", "30"]);
        Layers {
            base: Effective {
                common: CommonSettings {
                    ship_level: LevelFilter::INFO,
                },
                service: Page { size: 30 },
            },
            origins: Origins::from_matches(&matches, &["page_size"]),
            prefixes: [COMMON_PREFIX.into(), "gradebook/config/portal/".into()],
        }
    }

    fn snapshot(prefix: &str, index: u64, entries: &[(&str, &str)]) -> KvSnapshot {
        KvSnapshot {
            prefix: prefix.into(),
            entries: entries
                .iter()
                .map(|(k, v)| KvEntry {
                    key: k.to_string(),
                    value: KvValue::Text(v.to_string()),
                })
                .collect(),
            index,
            generation: 1,
            status: WatchStatus::Live,
            failed_polls: 0,
        }
    }

    fn common(index: u64, entries: &[(&str, &str)]) -> KvSnapshot {
        snapshot(COMMON_PREFIX, index, entries)
    }

    fn own(index: u64, entries: &[(&str, &str)]) -> KvSnapshot {
        snapshot("gradebook/config/portal/", index, entries)
    }

    #[test]
    fn without_keys_the_flags_decide() {
        let resolved = layers().resolve(&common(5, &[]), &own(7, &[]), None);
        assert_eq!(resolved.effective.service.size, 30);
        assert_eq!(resolved.report.source, "flags");
        assert_eq!(resolved.report.index, 7);
        assert_eq!(resolved.report.settings["page_size"].from, Origin::Flag);
    }

    #[test]
    fn service_keys_beat_common_keys_which_beat_flags() {
        let layers = layers();
        let resolved = layers.resolve(&common(5, &[("ship_level", "debug")]), &own(7, &[]), None);
        assert_eq!(resolved.effective.common.ship_level, LevelFilter::DEBUG);
        assert_eq!(
            resolved.report.settings["ship_level"].from,
            Origin::KvCommon
        );
        assert_eq!(resolved.report.source, "consul-kv");
        let resolved = layers.resolve(
            &common(5, &[("ship_level", "debug")]),
            &own(8, &[("ship_level", "warn"), ("page_size", "20")]),
            Some(&resolved),
        );
        assert_eq!(resolved.effective.common.ship_level, LevelFilter::WARN);
        assert_eq!(
            resolved.report.settings["ship_level"].from,
            Origin::KvService
        );
        assert_eq!(resolved.effective.service.size, 20);
    }

    #[test]
    fn a_refused_value_keeps_the_last_good_one_and_the_others_apply() {
        let layers = layers();
        let good = layers.resolve(&common(1, &[]), &own(2, &[("page_size", "20")]), None);
        let next = layers.resolve(
            &common(1, &[("ship_level", "loud")]),
            &own(3, &[("page_size", "0"), ("colour", "red")]),
            Some(&good),
        );
        assert_eq!(next.effective.service.size, 20, "last good kept");
        assert_eq!(next.report.settings["page_size"].from, Origin::KvService);
        assert_eq!(next.effective.common.ship_level, LevelFilter::INFO);
        let mut refused: Vec<&str> = next.refusals.iter().map(|(k, _)| k.as_str()).collect();
        refused.sort();
        assert_eq!(
            refused,
            [
                "gradebook/config/common/ship_level",
                "gradebook/config/portal/colour",
                "gradebook/config/portal/page_size"
            ]
        );
        let last = next.report.last_refused.as_ref().unwrap();
        assert!(
            last.reason.ends_with("the last good value is kept"),
            "{last:?}"
        );
    }

    #[test]
    fn a_deleted_key_falls_back_to_the_flag() {
        let layers = layers();
        let set = layers.resolve(&common(1, &[]), &own(2, &[("page_size", "20")]), None);
        let deleted = layers.resolve(&common(1, &[]), &own(3, &[]), Some(&set));
        assert_eq!(deleted.effective.service.size, 30);
        assert_eq!(deleted.report.settings["page_size"].from, Origin::Flag);
        assert_eq!(deleted.report.source, "flags");
    }

    #[test]
    fn oversized_and_binary_values_are_refused() {
        let layers = layers();
        let mut big = own(2, &[]);
        big.entries = Arc::from([KvEntry {
            key: "page_size".into(),
            value: KvValue::TooLarge(1 << 20),
        }]);
        let resolved = layers.resolve(&common(1, &[]), &big, None);
        assert_eq!(resolved.effective.service.size, 30);
        assert!(
            resolved.refusals[0].1.contains("1048576 bytes"),
            "{:?}",
            resolved.refusals
        );
    }

    #[test]
    fn numbers_and_texts_are_bounded() {
        assert_eq!(parse_in_range::<u32>(" 20 ", 1..=200), Ok(20));
        assert!(
            parse_in_range::<u32>("201", 1..=200)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            parse_in_range::<u32>("-1", 1..=200)
                .unwrap_err()
                .contains("not a whole")
        );
        assert!(parse_bounded_text("", 10).is_err());
        assert!(parse_bounded_text("a\u{7}b", 10).is_err());
        assert!(parse_bounded_text(&"x".repeat(11), 10).is_err());
        assert_eq!(parse_bounded_text(" École ", 10).unwrap(), "École");
    }
}
