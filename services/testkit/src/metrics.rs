//! Reading a service's `GET /metrics` as Prometheus would: every line checked against the text
//! exposition format, the samples kept for the test to look up.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name, e.g. `gradebook_http_requests_total`.
    pub name: String,
    /// The labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

/// A whole scrape, every line of which was valid.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The samples, in the order served.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// `GET {base_url}/metrics`, parsed; panics with the offending line if any is not in the text
    /// format, or if the answer is not a 200 of `text/plain; version=0.0.4`.
    pub async fn fetch(base_url: &str) -> Scrape {
        let url = format!("{base_url}/metrics");
        let response = crate::http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status(), 200, "GET {url}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
            "GET {url}: content-type {content_type}"
        );
        Scrape::parse(&response.text().await.unwrap())
    }

    /// Parses exposition text; panics naming the first line that is neither a sample, a
    /// `# HELP`/`# TYPE` line, nor empty, and on a sample before its family's `# TYPE`.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut typed: Vec<String> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let fail = |why: &str| -> ! { panic!("/metrics line {}: {why}: {line:?}", number + 1) };
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("HELP"), Some(name), Some(_)) if is_name(name) => {}
                    (Some("TYPE"), Some(name), Some(kind)) if is_name(name) => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            fail("unknown type");
                        }
                        typed.push(name.to_owned());
                    }
                    _ => fail("a comment that is neither # HELP NAME TEXT nor # TYPE NAME KIND"),
                }
                continue;
            }
            let sample = parse_sample(line).unwrap_or_else(|why| fail(why));
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| sample.name.strip_suffix(suffix))
                .filter(|base| typed.iter().any(|t| t == base))
                .unwrap_or(&sample.name);
            if !typed.iter().any(|t| t == family) {
                fail("a sample before its family's # TYPE");
            }
            samples.push(sample);
        }
        Scrape { samples }
    }

    /// The samples named `name` whose labels include every one of `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample named `name` with `labels`; panics if there is not exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.find(name, labels).collect();
        match found.as_slice() {
            [one] => one.value,
            _ => panic!("{} samples {name}{labels:?}: {found:?}", found.len()),
        }
    }

    /// How many distinct series the scrape holds.
    pub fn series(&self) -> usize {
        self.samples.len()
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(['{', ' ']).ok_or("no value after the name")?;
    let name = &line[..name_end];
    if !is_name(name) {
        return Err("not a metric name");
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = rest.split_once("=\"").ok_or("a label without =\"")?;
            if !is_name(key) {
                return Err("not a label name");
            }
            let mut value = String::new();
            let mut chars = after_key.char_indices();
            let end = loop {
                match chars.next().ok_or("an unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("a dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return Err("an unknown escape"),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            rest = &after_key[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut parts = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = match parts.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number.parse().map_err(|_| "a value that is not a number")?,
    };
    // An optional timestamp, in milliseconds.
    if let Some(timestamp) = parts.next()
        && timestamp.parse::<i64>().is_err()
    {
        return Err("a timestamp that is not an integer");
    }
    if parts.next().is_some() {
        return Err("more than a value and a timestamp");
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_reads_samples_with_escaped_labels() {
        let scrape = Scrape::parse(
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\",y=\"2\"} 3\n\
             # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1 1700000000000\n",
        );
        assert_eq!(scrape.value("a_total", &[("x", "q\"\\")]), 3.0);
        assert_eq!(scrape.value("h_count", &[]), 1.0);
        assert_eq!(scrape.series(), 4);
    }

    #[test]
    #[should_panic(expected = "before its family")]
    fn a_sample_without_its_type_is_refused() {
        Scrape::parse("a 1\n");
    }

    #[test]
    #[should_panic(expected = "not a number")]
    fn a_value_that_is_not_a_number_is_refused() {
        Scrape::parse("# TYPE a gauge\na{b=\"c\"} many\n");
    }
}
