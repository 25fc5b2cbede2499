//! Latency samples to summaries: min, median, p99, max (nearest-rank percentiles).

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Milliseconds as f64, the unit every latency metric is reported in.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of an ascending slice (p in 0..=100).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// None when there are no samples.
pub fn summarize(mut samples: Vec<f64>) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let count = samples.len();
    Some(Summary {
        min: samples[0],
        p50: percentile(&samples, 50.0),
        p99: percentile(&samples, 99.0),
        max: samples[count - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = summarize((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((s.min, s.p50, s.p99, s.max), (1.0, 50.0, 99.0, 100.0));
        let one = summarize(vec![7.0]).unwrap();
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert!(summarize(vec![]).is_none());
        let two = summarize(vec![3.0, 1.0]).unwrap();
        assert_eq!((two.min, two.p50, two.p99), (1.0, 1.0, 3.0));
    }
}
