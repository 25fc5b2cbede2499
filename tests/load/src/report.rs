//! Results: the JSON model shared by every subcommand (merged into one file per server),
//! the targets from the issue, and the tables (one server; two servers side by side).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stats::Summary;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub better: Better,
}

/// One workload's outcome on one server.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Workload {
    /// "W1" ... "W8".
    pub id: String,
    pub name: String,
    /// "ok", "failed: ...", or "not yet available: ...".
    pub status: String,
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// Failed requests by kind ("429 M_LIMIT_EXCEEDED", "timeout", "not delivered").
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The status of a workload that was asked for but could not run here (a missing option).
pub const NOT_RUN: &str = "not run";

/// Every workload of the issue, in report order.
pub const CATALOGUE: [(&str, &str); 9] = [
    ("W1", "send"),
    ("W2", "fan-out"),
    ("W3", "initial sync"),
    ("W4", "remote join"),
    ("W5", "federation ingest"),
    ("W6", "memory"),
    ("W7", "start and recovery"),
    ("W8", "appservice import"),
    ("W9", "sliding sync first page"),
];

pub fn workload_name(id: &str) -> &'static str {
    CATALOGUE.iter().find(|(i, _)| *i == id).map_or("?", |(_, name)| name)
}

impl Workload {
    pub fn new(id: &str) -> Self {
        Self { id: id.to_owned(), name: workload_name(id).to_owned(), status: "ok".to_owned(), ..Default::default() }
    }

    /// A workload that could not run with the options given (`not run: why`).
    pub fn not_run(id: &str, why: &str) -> Self {
        Self { status: format!("{NOT_RUN}: {why}"), ..Self::new(id) }
    }

    pub fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.insert(key.to_owned(), value.into());
    }

    pub fn metric(&mut self, name: &str, value: f64, unit: &str, better: Better) {
        self.metrics.retain(|m| m.name != name);
        self.metrics.push(Metric { name: name.to_owned(), value, unit: unit.to_owned(), better });
    }

    /// `{prefix} p50` and `{prefix} p99` in ms from a summary.
    pub fn latency(&mut self, prefix: &str, summary: Option<Summary>) {
        if let Some(s) = summary {
            self.metric(&format!("{prefix} p50"), s.p50, "ms", Better::Lower);
            self.metric(&format!("{prefix} p99"), s.p99, "ms", Better::Lower);
        }
    }

    pub fn error(&mut self, key: impl Into<String>) {
        *self.errors.entry(key.into()).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn fail(&mut self, why: impl std::fmt::Display) {
        self.status = format!("failed: {why}");
    }

    pub fn failed(&self) -> bool {
        self.status.starts_with("failed")
    }

    pub fn get(&self, metric: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == metric)
    }

    /// Folds a later result for the same workload into this one (metrics by name).
    fn absorb(&mut self, other: Workload) {
        if other.status != "ok" || self.status.starts_with(NOT_RUN) {
            self.status = other.status;
        }
        self.params.extend(other.params);
        for metric in other.metrics {
            self.metric(&metric.name, metric.value, &metric.unit, metric.better);
        }
        for (key, count) in other.errors {
            *self.errors.entry(key).or_default() += count;
        }
        self.notes.extend(other.notes);
    }
}

/// Everything measured on one server: what `--json FILE` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub label: String,
    pub url: String,
    pub workloads: Vec<Workload>,
}

impl Results {
    /// Reads `path` when it exists (to merge into), else starts empty.
    pub fn load_or_new(path: Option<&Path>, label: &str, url: &str) -> Result<Self, String> {
        let mut results = match path {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: not a results file: {e}", path.display()))?
            }
            _ => Results::default(),
        };
        if !label.is_empty() {
            results.label = label.to_owned();
        }
        if !url.is_empty() {
            results.url = url.to_owned();
        }
        Ok(results)
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a results file: {e}", path.display()))
    }

    pub fn merge(&mut self, workload: Workload) {
        match self.workloads.iter_mut().find(|w| w.id == workload.id) {
            Some(existing) => existing.absorb(workload),
            None => self.workloads.push(workload),
        }
        self.workloads.sort_by_key(|w| CATALOGUE.iter().position(|(id, _)| *id == w.id).unwrap_or(99));
    }

    pub fn workload(&self, id: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.id == id)
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text + "\n").map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

// -- targets -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// The metric itself, in its unit, must not exceed this.
    AtMost(f64),
    /// The metric itself, in its unit, must reach this.
    AtLeast(f64),
    /// ieum's advantage over the reference server (a factor, > 1 is better) must reach this.
    AdvantageAtLeast(f64),
}

pub struct Target {
    pub workload: &'static str,
    pub metric: &'static str,
    pub goal: Goal,
    pub text: &'static str,
}

/// The targets, attached to the metric each one is about.
pub const TARGETS: [Target; 11] = [
    Target { workload: "W1", metric: "throughput", goal: Goal::AdvantageAtLeast(20.0), text: ">= 20x Synapse" },
    Target { workload: "W1", metric: "send p99", goal: Goal::AtMost(5.0), text: "<= 5 ms" },
    Target { workload: "W2", metric: "delivery p99", goal: Goal::AtMost(50.0), text: "<= 50 ms @1000" },
    Target { workload: "W3", metric: "warm p50", goal: Goal::AtMost(300.0), text: "<= 300 ms" },
    Target { workload: "W4", metric: "usable p50", goal: Goal::AtMost(2000.0), text: "<= 2 s @1000" },
    Target { workload: "W5", metric: "throughput", goal: Goal::AtLeast(3000.0), text: ">= 3000/s" },
    Target { workload: "W6", metric: "rss idle", goal: Goal::AtMost(40.0), text: "<= 40 MB" },
    // PSS, not RSS: summed RSS counts PostgreSQL's shared buffers once per backend.
    Target { workload: "W6", metric: "pss after load", goal: Goal::AdvantageAtLeast(5.0), text: ">= 5x less" },
    Target { workload: "W7", metric: "start to /versions", goal: Goal::AtMost(300.0), text: "<= 300 ms" },
    Target { workload: "W8", metric: "throughput", goal: Goal::AtLeast(2000.0), text: ">= 2000/s" },
    Target { workload: "W9", metric: "first page p50", goal: Goal::AtMost(100.0), text: "<= 100 ms @2000" },
];

pub fn target_for(workload: &str, metric: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.workload == workload && t.metric == metric)
}

/// How many times better `subject` is than `reference` (> 1: subject is better).
pub fn advantage(subject: &Metric, reference: &Metric) -> Option<f64> {
    let (a, b) = (subject.value, reference.value);
    if !(a.is_finite() && b.is_finite()) || a <= 0.0 || b <= 0.0 {
        return None;
    }
    Some(match subject.better {
        Better::Higher => a / b,
        Better::Lower => b / a,
    })
}

/// Whether the subject meets a target: None when it cannot be judged (missing numbers).
pub fn meets(target: &Target, subject: &Metric, reference: Option<&Metric>) -> Option<bool> {
    match target.goal {
        Goal::AtMost(limit) => Some(subject.value <= limit),
        Goal::AtLeast(floor) => Some(subject.value >= floor),
        Goal::AdvantageAtLeast(factor) => reference.and_then(|r| advantage(subject, r)).map(|a| a >= factor),
    }
}

// -- tables --------------------------------------------------------------------------

pub fn fmt_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 100.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn params_text(workload: &Workload) -> String {
    let parts: Vec<String> = workload
        .params
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    if parts.is_empty() { String::new() } else { format!(" ({})", parts.join(", ")) }
}

/// Renders rows as an aligned text table; the first row is the header. A row of two
/// cells is a title and a free text that spans the other columns (a status line).
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter(|r| r.len() > 2 || c == 0)
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        if row.len() == 2 {
            let pad = widths[0] - row[0].chars().count();
            let _ = writeln!(out, "{}{}  {}", row[0], " ".repeat(pad), row[1]);
            continue;
        }
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            // Text columns left-aligned, number-ish columns right-aligned.
            if c < 2 {
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(line, "{}{cell}  ", " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1)));
            out.push('\n');
        }
    }
    out
}

/// The table for one server.
pub fn single_table(results: &Results) -> String {
    let mut out = format!("{} at {}\n", results.label, results.url);
    let mut rows = vec![vec!["workload".into(), "metric".into(), "value".into(), "unit".into(), "target".into()]];
    for workload in &results.workloads {
        let title = format!("{} {}", workload.id, workload.name);
        if workload.metrics.is_empty() || workload.status != "ok" {
            rows.push(vec![title.clone(), workload.status.clone()]);
        }
        for (i, metric) in workload.metrics.iter().enumerate() {
            let target = target_for(&workload.id, &metric.name)
                .map(|t| match meets(t, metric, None) {
                    Some(true) => format!("{} met", t.text),
                    Some(false) => format!("{} MISSED", t.text),
                    None => t.text.to_owned(),
                })
                .unwrap_or_default();
            let first = i == 0 && workload.status == "ok";
            rows.push(vec![
                if first { title.clone() } else { String::new() },
                metric.name.clone(),
                fmt_value(metric.value),
                metric.unit.clone(),
                target,
            ]);
        }
        if !workload.errors.is_empty() {
            let text: Vec<String> = workload.errors.iter().map(|(k, v)| format!("{v}x {k}")).collect();
            rows.push(vec![String::new(), format!("errors: {}", text.join(", "))]);
        }
    }
    out.push_str(&render(&rows));
    for workload in &results.workloads {
        if !workload.params.is_empty() {
            let _ = writeln!(out, "  {}{}", workload.id, params_text(workload));
        }
        for note in &workload.notes {
            let _ = writeln!(out, "  {}: {note}", workload.id);
        }
    }
    out
}

/// One row of the side-by-side comparison, as written to the combined JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub subject: Option<f64>,
    pub reference: Option<f64>,
    /// Factor by which the subject is better (> 1) or worse (< 1).
    pub advantage: Option<f64>,
    pub target: Option<String>,
    pub met: Option<bool>,
}

pub fn compare_rows(subject: &Results, reference: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    for (id, _) in CATALOGUE {
        let (a, b) = (subject.workload(id), reference.workload(id));
        let mut names: Vec<&Metric> = a.map(|w| w.metrics.iter().collect()).unwrap_or_default();
        for metric in b.map(|w| w.metrics.as_slice()).unwrap_or_default() {
            if !names.iter().any(|m| m.name == metric.name) {
                names.push(metric);
            }
        }
        for metric in names {
            let sa = a.and_then(|w| w.get(&metric.name));
            let sb = b.and_then(|w| w.get(&metric.name));
            let target = target_for(id, &metric.name);
            rows.push(Row {
                workload: id.to_owned(),
                metric: metric.name.clone(),
                unit: metric.unit.clone(),
                subject: sa.map(|m| m.value),
                reference: sb.map(|m| m.value),
                advantage: sa.zip(sb).and_then(|(x, y)| advantage(x, y)),
                target: target.map(|t| t.text.to_owned()),
                met: target.zip(sa).and_then(|(t, x)| meets(t, x, sb)),
            });
        }
    }
    rows
}

pub fn compare_table(subject: &Results, reference: &Results, rows: &[Row]) -> String {
    let mut table = vec![vec![
        "workload".to_owned(),
        "metric".to_owned(),
        subject.label.clone(),
        reference.label.clone(),
        "unit".to_owned(),
        format!("{} vs {}", subject.label, reference.label),
        "target".to_owned(),
        "met".to_owned(),
    ]];
    let mut out = String::new();
    for (id, name) in CATALOGUE {
        let (a, b) = (subject.workload(id), reference.workload(id));
        let title = format!("{id} {name}");
        let status = a.map(|w| w.status.clone()).or_else(|| b.map(|w| w.status.clone()));
        let ours: Vec<&Row> = rows.iter().filter(|r| r.workload == id).collect();
        if ours.is_empty() {
            let text = status.unwrap_or_else(|| "not run".to_owned());
            table.push(vec![title, text]);
            continue;
        }
        for (i, row) in ours.iter().enumerate() {
            let advantage = row
                .advantage
                .map(|f| if f >= 1.0 { format!("{f:.1}x better") } else { format!("{:.1}x worse", 1.0 / f) })
                .unwrap_or_else(|| "-".to_owned());
            let met = match row.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            table.push(vec![
                if i == 0 { title.clone() } else { String::new() },
                row.metric.clone(),
                row.subject.map(fmt_value).unwrap_or_else(|| "-".to_owned()),
                row.reference.map(fmt_value).unwrap_or_else(|| "-".to_owned()),
                row.unit.clone(),
                advantage,
                row.target.clone().unwrap_or_default(),
                met.to_owned(),
            ]);
        }
        for (label, w) in [(&subject.label, a), (&reference.label, b)] {
            if let Some(w) = w {
                if w.status != "ok" {
                    let _ = writeln!(out, "  {id} on {label}: {}", w.status);
                }
                if !w.errors.is_empty() {
                    let text: Vec<String> = w.errors.iter().map(|(k, v)| format!("{v}x {k}")).collect();
                    let _ = writeln!(out, "  {id} on {label}: errors: {}", text.join(", "));
                }
            }
        }
    }
    let mut text = render(&table);
    for (id, _) in CATALOGUE {
        let (a, b) = (subject.workload(id), reference.workload(id));
        // Sizes once when both servers ran the same, else per server.
        match (a, b) {
            (Some(a), Some(b)) if a.params == b.params && !a.params.is_empty() => {
                let _ = writeln!(text, "  {id}{}", params_text(a));
            }
            _ => {
                for (label, w) in [(&subject.label, a), (&reference.label, b)] {
                    if let Some(w) = w.filter(|w| !w.params.is_empty()) {
                        let _ = writeln!(text, "  {id} on {label}{}", params_text(w));
                    }
                }
            }
        }
        for (label, w) in [(&subject.label, a), (&reference.label, b)] {
            for note in w.map(|w| w.notes.as_slice()).unwrap_or_default() {
                let _ = writeln!(text, "  {id} on {label}: {note}");
            }
        }
    }
    text.push_str(&out);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(value: f64, better: Better) -> Metric {
        Metric { name: "m".into(), value, unit: "ms".into(), better }
    }

    #[test]
    fn advantage_points_the_right_way() {
        assert_eq!(advantage(&metric(100.0, Better::Higher), &metric(10.0, Better::Higher)), Some(10.0));
        assert_eq!(advantage(&metric(2.0, Better::Lower), &metric(10.0, Better::Lower)), Some(5.0));
        assert_eq!(advantage(&metric(0.0, Better::Lower), &metric(10.0, Better::Lower)), None);
    }

    #[test]
    fn merging_keeps_metrics_by_name() {
        let mut results = Results::default();
        let mut first = Workload::new("W3");
        first.metric("warm p50", 10.0, "ms", Better::Lower);
        results.merge(first);
        let mut second = Workload::new("W3");
        second.metric("cold", 50.0, "ms", Better::Lower);
        second.metric("warm p50", 12.0, "ms", Better::Lower);
        results.merge(second);
        results.merge(Workload::new("W1"));
        assert_eq!(results.workloads[0].id, "W1");
        let w3 = results.workload("W3").unwrap();
        assert_eq!(w3.metrics.len(), 2);
        assert_eq!(w3.get("warm p50").unwrap().value, 12.0);
    }

    #[test]
    fn targets_are_judged() {
        let t = target_for("W1", "send p99").unwrap();
        assert_eq!(meets(t, &metric(4.0, Better::Lower), None), Some(true));
        let t = target_for("W1", "throughput").unwrap();
        assert_eq!(meets(t, &metric(400.0, Better::Higher), Some(&metric(10.0, Better::Higher))), Some(true));
        assert_eq!(meets(t, &metric(400.0, Better::Higher), None), None);
    }
}
