//! `/metrics` in Prometheus' text format: requests by route and status, request latency and
//! batch size histograms, queue depth, images classified and their recent rate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A cumulative histogram with fixed upper bounds.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The server's counters.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Histogram,
    batch: Histogram,
    images: AtomicU64,
    /// Requests refused because their bodies would exceed `--max-inflight-mb`.
    refused_inflight: AtomicU64,
    /// Images classified in the last seconds, for the rate.
    recent: Mutex<Vec<(Instant, u64)>>,
}

/// The window over which images/s is computed.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl Default for Metrics {
    fn default() -> Self {
        static LATENCY: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        static BATCH: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(&LATENCY),
            batch: Histogram::new(&BATCH),
            images: AtomicU64::new(0),
            refused_inflight: AtomicU64::new(0),
            recent: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((route.to_string(), status)).or_default() += 1;
        }
        self.latency.observe(seconds);
    }

    /// One model call on `images` images; only a call that succeeded counts them as classified.
    pub fn batch(&self, images: usize, succeeded: bool) {
        self.batch.observe(images as f64);
        if !succeeded {
            return;
        }
        self.images.fetch_add(images as u64, Ordering::Relaxed);
        if let Ok(mut r) = self.recent.lock() {
            let now = Instant::now();
            r.retain(|(t, _)| now.duration_since(*t) < RATE_WINDOW);
            r.push((now, images as u64));
        }
    }

    /// One request refused for the request body bytes in flight.
    pub fn refused_inflight(&self) {
        self.refused_inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition; `queue_depth` is the queue's length now, `inflight_bytes` the
    /// request body bytes held now.
    pub fn render(&self, queue_depth: usize, inflight_bytes: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP infer_requests_total Requests answered, by route and HTTP status.\n");
        out.push_str("# TYPE infer_requests_total counter\n");
        if let Ok(r) = self.requests.lock() {
            for ((route, status), n) in r.iter() {
                let _ = writeln!(out, "infer_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
        self.latency.render(&mut out, "infer_request_duration_seconds", "Time from request to response.");
        self.batch.render(&mut out, "infer_batch_size", "Images per model call.");
        let _ =
            writeln!(out, "# HELP infer_queue_depth Requests waiting for the model.\n# TYPE infer_queue_depth gauge");
        let _ = writeln!(out, "infer_queue_depth {queue_depth}");
        let _ = writeln!(
            out,
            "# HELP infer_inflight_body_bytes Request body bytes held now (admitted, not yet answered).\n# TYPE infer_inflight_body_bytes gauge\ninfer_inflight_body_bytes {inflight_bytes}"
        );
        let _ = writeln!(
            out,
            "# HELP infer_refused_inflight_total Requests answered 503 because their bodies would exceed --max-inflight-mb.\n# TYPE infer_refused_inflight_total counter\ninfer_refused_inflight_total {}",
            self.refused_inflight.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP infer_images_total Images classified.\n# TYPE infer_images_total counter");
        let _ = writeln!(out, "infer_images_total {}", self.images.load(Ordering::Relaxed));
        let rate = self.recent.lock().map_or(0.0, |r| {
            let now = Instant::now();
            r.iter().filter(|(t, _)| now.duration_since(*t) < RATE_WINDOW).map(|(_, n)| *n).sum::<u64>() as f64
                / RATE_WINDOW.as_secs_f64()
        });
        let _ = writeln!(out, "# HELP infer_images_per_second Images classified per second over the last 10 s.");
        let _ = writeln!(out, "# TYPE infer_images_per_second gauge\ninfer_images_per_second {rate}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.request("/v2/models/m/infer", 200, 0.02);
        m.request("/v2/models/m/infer", 503, 0.001);
        m.batch(8, true);
        m.refused_inflight();
        let text = m.render(3, 4096);
        assert!(text.contains("infer_requests_total{route=\"/v2/models/m/infer\",status=\"503\"} 1"), "{text}");
        assert!(text.contains("infer_request_duration_seconds_bucket{le=\"0.025\"} 2"), "{text}");
        assert!(
            text.contains("infer_batch_size_bucket{le=\"4\"} 0")
                && text.contains("infer_batch_size_bucket{le=\"8\"} 1")
        );
        assert!(text.contains("infer_queue_depth 3") && text.contains("infer_images_total 8"));
        assert!(text.contains("infer_inflight_body_bytes 4096") && text.contains("infer_refused_inflight_total 1"));
    }
}
