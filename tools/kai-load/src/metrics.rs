//! Reading Prometheus text exposition: just enough to sum a counter (or a
//! histogram's `_count`) across the series that match some labels.

/// One sample line: `name{a="x",b="y"} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses every sample line of a text exposition; comments and junk are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let space = line.find(char::is_whitespace)?;
            (&line[..space], Vec::new(), &line[space..])
        }
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key.trim().to_owned(), value));
    }
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Sum of every sample called `name` whose labels include all of `filter`.
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Metric families declared (`# TYPE name kind`) or sampled in the text.
pub fn families(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                rest.split_whitespace().next().map(str::to_owned)
            } else {
                parse_line(l).map(|s| s.name)
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The counters kai-load compares before and after a scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    pub cache_hits: f64,
    pub cache_misses: f64,
    pub db_statements: f64,
}

impl Snapshot {
    pub fn from_text(text: &str) -> Self {
        let samples = parse(text);
        Self {
            cache_hits: sum(&samples, "kai_cache_hits_total", &[]),
            cache_misses: sum(&samples, "kai_cache_misses_total", &[]),
            db_statements: sum(&samples, "kai_db_query_duration_seconds_count", &[]),
        }
    }

    /// What happened between `self` (before) and `after`.
    pub fn delta(&self, after: &Snapshot) -> Snapshot {
        Snapshot {
            cache_hits: after.cache_hits - self.cache_hits,
            cache_misses: after.cache_misses - self.cache_misses,
            db_statements: after.db_statements - self.db_statements,
        }
    }

    /// Hits over lookups, or `None` when nothing was looked up.
    pub fn hit_rate(&self) -> Option<f64> {
        let lookups = self.cache_hits + self.cache_misses;
        (lookups > 0.0).then(|| self.cache_hits / lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP kai_cache_hits_total Cache hits (L1 or L2) by namespace
# TYPE kai_cache_hits_total counter
kai_cache_hits_total{namespace="journal_list",service="journal"} 120
kai_cache_hits_total{namespace="journal_entry",service="journal"} 30
kai_cache_misses_total{namespace="journal_list",service="journal"} 50
# TYPE kai_db_query_duration_seconds histogram
kai_db_query_duration_seconds_bucket{service="journal",le="0.0001"} 0
kai_db_query_duration_seconds_bucket{service="journal",le="+Inf"} 7
kai_db_query_duration_seconds_sum{service="journal"} 0.0123
kai_db_query_duration_seconds_count{service="journal"} 7
kai_http_requests_total{endpoint="/api/journal/entries/{id}",method="GET",service="journal",status="200"} 3 1700000000000
weird_label{path="a \"quoted\, value"} 1.5e3
process_open_fds 12
"#;

    #[test]
    fn sums_counters_by_name_and_label() {
        let s = parse(TEXT);
        assert_eq!(sum(&s, "kai_cache_hits_total", &[]), 150.0);
        assert_eq!(
            sum(&s, "kai_cache_hits_total", &[("namespace", "journal_list")]),
            120.0
        );
        assert_eq!(
            sum(&s, "kai_cache_hits_total", &[("namespace", "nope")]),
            0.0
        );
        assert_eq!(
            sum(&s, "kai_http_requests_total", &[("status", "200")]),
            3.0
        );
        assert_eq!(sum(&s, "process_open_fds", &[]), 12.0);
        assert_eq!(sum(&s, "weird_label", &[]), 1500.0);
        let inf = s.iter().find(|x| x.label("le") == Some("+Inf")).unwrap();
        assert_eq!(inf.value, 7.0);
        assert_eq!(
            s.iter()
                .find(|x| x.name == "weird_label")
                .unwrap()
                .label("path"),
            Some("a \"quoted, value")
        );
    }

    #[test]
    fn snapshots_give_deltas_and_hit_rates() {
        let before = Snapshot::from_text(TEXT);
        assert_eq!(before.db_statements, 7.0);
        let after = Snapshot {
            cache_hits: 250.0,
            cache_misses: 50.0,
            db_statements: 9.0,
        };
        let d = before.delta(&after);
        assert_eq!(
            (d.cache_hits, d.cache_misses, d.db_statements),
            (100.0, 0.0, 2.0)
        );
        assert_eq!(d.hit_rate(), Some(1.0));
        assert_eq!(Snapshot::default().hit_rate(), None);
    }

    #[test]
    fn lists_families_from_type_lines_and_samples() {
        let f = families(TEXT);
        assert!(f.contains(&"kai_db_query_duration_seconds".to_owned()));
        assert!(f.contains(&"kai_cache_misses_total".to_owned()));
        assert!(f.contains(&"process_open_fds".to_owned()));
    }
}
