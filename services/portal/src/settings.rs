//! The portal's settings that change while it runs: each a flag with an environment variable,
//! overridden by Consul KV under `gradebook/config/portal/` (see
//! [`service_runtime::live_config`] for the order).

use service_runtime::live_config::{Settings, parse_in_range};

/// Students per page on the home page: the default, and the bounds (a page of 500 students is
/// about 2 MB from grading, within its answer cap).
pub const DEFAULT_STUDENTS_PER_PAGE: usize = 50;
pub const STUDENTS_PER_PAGE_RANGE: std::ops::RangeInclusive<usize> = 1..=500;
/// The average below which a student is marked as failing.
pub const DEFAULT_PASSING_SCORE: u32 = 50;
pub const PASSING_SCORE_RANGE: std::ops::RangeInclusive<u32> = 0..=100;

/// The flags of the live settings; their ids are the KV key names.
#[derive(Debug, Clone, clap::Args)]
pub struct PortalSettingsArgs {
    /// Students listed per page on the home page, 1 to 500 (live: KV
    /// gradebook/config/portal/students_per_page).
    #[arg(long, env = "GRADEBOOK_STUDENTS_PER_PAGE", default_value_t = DEFAULT_STUDENTS_PER_PAGE,
        value_parser = |text: &str| parse_in_range(text, STUDENTS_PER_PAGE_RANGE))]
    pub students_per_page: usize,

    /// Averages below this score, 0 to 100, are marked failing (live: KV
    /// gradebook/config/portal/passing_score).
    #[arg(long, env = "GRADEBOOK_PASSING_SCORE", default_value_t = DEFAULT_PASSING_SCORE,
        value_parser = |text: &str| parse_in_range(text, PASSING_SCORE_RANGE))]
    pub passing_score: u32,
}

/// What the pages read on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSettings {
    pub students_per_page: usize,
    pub passing_score: u32,
}

impl Default for PortalSettings {
    fn default() -> Self {
        PortalSettings {
            students_per_page: DEFAULT_STUDENTS_PER_PAGE,
            passing_score: DEFAULT_PASSING_SCORE,
        }
    }
}

impl From<&PortalSettingsArgs> for PortalSettings {
    fn from(args: &PortalSettingsArgs) -> Self {
        PortalSettings {
            students_per_page: args.students_per_page,
            passing_score: args.passing_score,
        }
    }
}

impl Settings for PortalSettings {
    const KEYS: &'static [&'static str] = &["passing_score", "students_per_page"];

    fn set(&mut self, key: &str, text: &str) -> Result<(), String> {
        match key {
            "students_per_page" => {
                self.students_per_page = parse_in_range(text, STUDENTS_PER_PAGE_RANGE)?
            }
            "passing_score" => self.passing_score = parse_in_range(text, PASSING_SCORE_RANGE)?,
            _ => return Err(format!("unknown key {key:?}")),
        }
        Ok(())
    }

    fn text(&self, key: &str) -> String {
        match key {
            "students_per_page" => self.students_per_page.to_string(),
            "passing_score" => self.passing_score.to_string(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_within_their_ranges_and_print_back() {
        let mut settings = PortalSettings::default();
        settings.set("students_per_page", "20").unwrap();
        settings.set("passing_score", "0").unwrap();
        assert_eq!(settings.text("students_per_page"), "20");
        assert_eq!(settings.text("passing_score"), "0");
        assert!(settings.set("students_per_page", "0").is_err());
        assert!(settings.set("students_per_page", "501").is_err());
        assert!(settings.set("passing_score", "101").is_err());
        assert!(settings.set("passing_score", "fifty").is_err());
        assert!(settings.set("school", "x").is_err());
        assert_eq!(
            settings,
            PortalSettings {
                students_per_page: 20,
                passing_score: 0
            }
        );
    }
}
