//! Prometheus text exposition (format 0.0.4) of the server's counters and the scheduler's
//! state. Small enough to write by hand: a few counters, gauges and two histograms.

use crate::api::SchedulerStats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Time to first token spans queueing and prompt processing: milliseconds to minutes.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Inter-token latency is one decode step of a batch: a tenth of a millisecond (small models)
/// to about a second.
const ITL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramData>,
}

#[derive(Default, Clone)]
struct HistogramData {
    /// Non-cumulative counts per bucket, plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            inner: Mutex::new(HistogramData {
                counts: vec![0; bounds.len() + 1],
                ..Default::default()
            }),
        }
    }

    pub fn observe(&self, d: Duration) {
        let x = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < x);
        // A poisoned lock only means another thread panicked mid-update of plain numbers.
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        h.counts[i] += 1;
        h.sum += x;
        h.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub in_flight: AtomicU64,
    pub generation_errors: AtomicU64,
    pub cancelled: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            in_flight: AtomicU64::new(0),
            generation_errors: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
        }
    }
}

impl Metrics {
    /// `endpoint` is a route pattern (never the raw path, whose values a client picks).
    pub fn request(&self, endpoint: &'static str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((endpoint, status)).or_insert(0) += 1;
    }

    pub fn render(&self, s: &SchedulerStats) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP bitnet_requests_total HTTP requests by route and status.\n# TYPE bitnet_requests_total counter"
        );
        for ((ep, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "bitnet_requests_total{{endpoint=\"{ep}\",status=\"{status}\"}} {n}"
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let scalars: [(&str, &str, &str, u64); 15] = [
            (
                "bitnet_requests_in_flight",
                "gauge",
                "HTTP requests being handled.",
                load(&self.in_flight),
            ),
            (
                "bitnet_generation_errors_total",
                "counter",
                "Generations that ended in an engine error.",
                load(&self.generation_errors),
            ),
            (
                "bitnet_requests_cancelled_total",
                "counter",
                "Generations cancelled because the client went away.",
                load(&self.cancelled),
            ),
            (
                "bitnet_prompt_tokens_total",
                "counter",
                "Prompt tokens of admitted requests.",
                s.prompt_tokens,
            ),
            (
                "bitnet_generated_tokens_total",
                "counter",
                "Tokens generated.",
                s.generated_tokens,
            ),
            (
                "bitnet_prefix_cache_hit_tokens_total",
                "counter",
                "Prompt tokens whose KV entries came from the prefix cache.",
                s.prefix_cache_hit_tokens,
            ),
            (
                "bitnet_engine_requests_finished_total",
                "counter",
                "Requests the scheduler finished.",
                s.requests_finished,
            ),
            (
                "bitnet_queue_waiting",
                "gauge",
                "Requests waiting for a sequence slot or KV blocks.",
                s.waiting as u64,
            ),
            (
                "bitnet_sequences_running",
                "gauge",
                "Sequences being processed.",
                s.running as u64,
            ),
            (
                "bitnet_kv_blocks_used",
                "gauge",
                "KV cache blocks in use.",
                s.kv_blocks_used as u64,
            ),
            (
                "bitnet_kv_blocks_total",
                "gauge",
                "KV cache blocks in all.",
                s.kv_blocks_total as u64,
            ),
            (
                "bitnet_kv_block_tokens",
                "gauge",
                "Token positions per KV block.",
                s.kv_block_tokens as u64,
            ),
            (
                "bitnet_engine_steps_total",
                "counter",
                "Forward passes the scheduler ran.",
                s.steps,
            ),
            (
                "bitnet_preemptions_total",
                "counter",
                "Sequences whose KV blocks were taken back to make room.",
                s.preemptions,
            ),
            ("bitnet_up", "gauge", "1 while the server runs.", 1),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        self.ttft.render(
            &mut out,
            "bitnet_time_to_first_token_seconds",
            "From submission to the first generated token, queueing included.",
        );
        self.itl.render(
            &mut out,
            "bitnet_inter_token_latency_seconds",
            "Time between consecutive tokens of one sequence.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn renders_counters_gauges_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 503);
        m.ttft.observe(Duration::from_millis(30));
        m.ttft.observe(Duration::from_millis(200));
        m.ttft.observe(Duration::from_secs(100));
        m.itl.observe(Duration::from_micros(1500));
        let stats = SchedulerStats {
            waiting: 3,
            running: 2,
            kv_blocks_used: 5,
            kv_blocks_total: 64,
            kv_block_tokens: 16,
            prefix_cache_hit_tokens: 7,
            prompt_tokens: 100,
            generated_tokens: 40,
            requests_finished: 4,
            ..Default::default()
        };
        let t = m.render(&stats);
        assert_eq!(
            value(
                &t,
                r#"bitnet_requests_total{endpoint="/v1/completions",status="200"}"#
            ),
            2.0
        );
        assert_eq!(
            value(
                &t,
                r#"bitnet_requests_total{endpoint="/v1/completions",status="503"}"#
            ),
            1.0
        );
        assert_eq!(value(&t, "bitnet_queue_waiting"), 3.0);
        assert_eq!(value(&t, "bitnet_sequences_running"), 2.0);
        assert_eq!(value(&t, "bitnet_kv_blocks_used"), 5.0);
        assert_eq!(value(&t, "bitnet_kv_blocks_total"), 64.0);
        assert_eq!(value(&t, "bitnet_prefix_cache_hit_tokens_total"), 7.0);
        assert_eq!(value(&t, "bitnet_prompt_tokens_total"), 100.0);
        assert_eq!(value(&t, "bitnet_generated_tokens_total"), 40.0);
        let b = |le: &str| {
            value(
                &t,
                &format!("bitnet_time_to_first_token_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.025"), 0.0);
        assert_eq!(b("0.05"), 1.0);
        assert_eq!(b("0.25"), 2.0);
        assert_eq!(b("60"), 2.0);
        assert_eq!(b("+Inf"), 3.0);
        assert_eq!(value(&t, "bitnet_time_to_first_token_seconds_count"), 3.0);
        assert!((value(&t, "bitnet_time_to_first_token_seconds_sum") - 100.23).abs() < 1e-9);
        assert_eq!(
            value(
                &t,
                r#"bitnet_inter_token_latency_seconds_bucket{le="0.0025"}"#
            ),
            1.0
        );
        // Every series has its TYPE line, and every line is a comment or "name value".
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let (series, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
            let name = series.split('{').next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                t.contains(&format!("# TYPE {name} ")) || t.contains(&format!("# TYPE {base} ")),
                "{l}"
            );
        }
    }
}
