//! `infer serve` as clients use it: NVIDIA's tritonclient over the Open Inference Protocol
//! (binary and JSON), curl-style `/v1/classify`, `/metrics`, and the server's behaviour under
//! pressure: a full queue (503 + Retry-After), a body over the limit (413), bad images (400
//! naming the reason), SIGTERM with requests in flight (they finish, exit 0). Every server
//! listens on 127.0.0.1 on a port the system chooses.

#![cfg(feature = "server")]

use test_support as common;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use support::{http, multipart, png, Server};

fn images(dir: &Path) -> Vec<PathBuf> {
    match seed_data() {
        Some(d) => {
            let mut files: Vec<PathBuf> = ["ants", "bees"]
                .iter()
                .flat_map(|c| std::fs::read_dir(d.join("val").join(c)).unwrap().map(|e| e.unwrap().path()))
                .collect();
            files.sort();
            files
        }
        None => (0..24u32)
            .map(|i| {
                let p = dir.join(format!("{i:02}.png"));
                colour_image([(i * 40 % 256) as u8, (i * 90 % 256) as u8, 120], 60 + i, 50).save(&p).unwrap();
                p
            })
            .collect(),
    }
}

/// tritonclient, binary and JSON, image bytes and preprocessed tensors: the same classes and
/// probabilities as `infer` on the command line.
#[test]
fn a_triton_client_gets_what_the_cli_gets() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let files = images(tmp.path());
    let cli = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(["--ep", "cpu", "--format", "jsonl", "--top-k", "3", "--model"])
        .arg(&model)
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(0));
    let expected: HashMap<String, (String, Vec<f64>)> = String::from_utf8_lossy(&cli.stdout)
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut probs = vec![0.0; 3];
            for s in r["top_k"].as_array().unwrap() {
                probs[s["class_index"].as_u64().unwrap() as usize] = s["probability"].as_f64().unwrap();
            }
            let name = Path::new(r["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
            (name, (r["label"].as_str().unwrap().to_string(), probs))
        })
        .collect();

    let server = Server::start(&model, &["--ep", "cpu"]);
    server.wait_ready();
    let mut args: Vec<&std::ffi::OsStr> = vec![server.addr.as_ref(), "m".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out: serde_json::Value = serde_json::from_str(&run_python("v2_client.py", &args)).unwrap();
    assert_eq!(out["live"], true);
    assert_eq!(out["ready"], true);
    assert_eq!(out["metadata"]["parameters"]["classes"], serde_json::json!(["red", "green", "blue"]));
    for mode in ["binary", "json"] {
        let got = out[mode].as_object().unwrap();
        assert_eq!(got.len(), expected.len(), "{mode}");
        for (name, (label, probs)) in &expected {
            let r = &got[name];
            assert_eq!(r["label"], label.as_str(), "{mode} {name}");
            for (a, b) in r["probabilities"].as_array().unwrap().iter().zip(probs) {
                assert!((a.as_f64().unwrap() - b).abs() < 1e-6, "{mode} {name}: {a} vs {b}");
            }
        }
    }
    // Preprocessed by torchvision on the client: the same classes, probabilities within PIL's
    // JPEG decoding differences.
    for (name, r) in out["tensor"].as_object().unwrap() {
        let (_, probs) = &expected[name];
        for (a, b) in r["probabilities"].as_array().unwrap().iter().zip(probs) {
            assert!((a.as_f64().unwrap() - b).abs() < 0.02, "tensor {name}: {a} vs {b}");
        }
    }
    assert_eq!(out["top3"][0].as_array().unwrap().len(), 3);
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// `/v1/classify` with one image and with several (one of them bad), bad input and sizes,
/// unknown models, metrics.
#[test]
fn plain_endpoint_limits_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let server = Server::start(&model, &["--ep", "cpu", "--max-body-mb", "1"]);
    // Live at once; ready only once loaded (a fresh server is usually still loading).
    assert_eq!(http(&server.addr, "GET", "/v2/health/live", &[], b"").0, 200);
    server.wait_ready();
    let png = png(&colour_image(RED, 50, 40));

    let (status, _, body) = http(&server.addr, "POST", "/v1/classify?top_k=2&name=red.png", &[], &png);
    assert_eq!(status, 200);
    let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((r["path"].as_str(), r["label"].as_str()), (Some("red.png"), Some("red")));
    assert_eq!(r["top_k"].as_array().unwrap().len(), 2);

    let (ct, form) = multipart(&[("a.png", &png), ("notes.txt", b"not an image"), ("b.png", &png)]);
    let (status, _, body) = http(&server.addr, "POST", "/v1/classify", &[("Content-Type", &ct)], &form);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let records: Vec<serde_json::Value> =
        String::from_utf8_lossy(&body).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["label"], "red");
    assert!(records[1]["error"].as_str().unwrap().contains("not an image"), "{:?}", records[1]);
    assert_eq!(records[2]["path"], "b.png");

    let (status, _, body) = http(&server.addr, "POST", "/v1/classify", &[], b"garbage");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not an image"));
    let v2_bad = br#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["Z2FyYmFnZQ=="]}]}"#;
    let (status, _, body) = http(&server.addr, "POST", "/v2/models/m/infer", &[], v2_bad);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("image 0: not an image"), "{}", String::from_utf8_lossy(&body));
    assert_eq!(http(&server.addr, "POST", "/v2/models/other/infer", &[], v2_bad).0, 404);
    assert_eq!(http(&server.addr, "GET", "/v2/models/m/ready", &[], b"").0, 200);
    let big = vec![0u8; 2 << 20];
    assert_eq!(http(&server.addr, "POST", "/v1/classify", &[], &big).0, 413);

    let (_, _, metrics) = http(&server.addr, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("infer_requests_total{route=\"/v1/classify\",status=\"200\"} 2"), "{metrics}");
    assert!(metrics.contains("infer_requests_total{route=\"/v1/classify\",status=\"413\"} 1"), "{metrics}");
    assert!(metrics.contains("infer_images_total 3"), "{metrics}");
    assert!(metrics.contains("infer_batch_size_bucket") && metrics.contains("infer_queue_depth"));
    let (code, _) = server.stop();
    assert_eq!(code, Some(0));
}

/// More images in one request than `--max-batch` are refused before any is decoded, over the
/// protocol and on `/v1/classify`; model versions other than 1 do not exist.
#[test]
fn oversized_requests_and_unknown_versions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let server = Server::start(&model, &["--ep", "cpu"]);
    server.wait_ready();
    let png = png(&colour_image(RED, 50, 40));
    // At most --max-batch (32) images in one request, before any is decoded.
    let mut data = Vec::new();
    for _ in 0..33 {
        data.extend((png.len() as u32).to_le_bytes());
        data.extend(&png);
    }
    let head = format!(
        r#"{{"inputs":[{{"name":"image","shape":[33],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}]}}"#,
        data.len()
    );
    let mut many = head.clone().into_bytes();
    many.extend(&data);
    let len = head.len().to_string();
    let (status, _, body) =
        http(&server.addr, "POST", "/v2/models/m/infer", &[("Inference-Header-Content-Length", &len)], &many);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("33 images in one request; at most 32"));
    let names: Vec<String> = (0..33).map(|i| format!("{i}.png")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &png[..])).collect();
    let (ct, form) = multipart(&files);
    let (status, _, body) = http(&server.addr, "POST", "/v1/classify", &[("Content-Type", &ct)], &form);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("at most 32 (--max-batch)"));
    // Version 1 is the only one.
    assert_eq!(http(&server.addr, "GET", "/v2/models/m/versions/1/ready", &[], b"").0, 200);
    assert_eq!(http(&server.addr, "GET", "/v2/models/m/versions/2/ready", &[], b"").0, 404);
    assert_eq!(http(&server.addr, "GET", "/v2/models/m/versions/2", &[], b"").0, 404);
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// A slow model, one image per batch, a queue of one: concurrent requests beyond what waits
/// are answered 503 with Retry-After; then SIGTERM with requests in flight lets them finish.
#[test]
fn a_full_queue_answers_503_and_sigterm_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "slow");
    let png = png(&colour_image(BLUE, 40, 40));
    let fire = |addr: &str, n: usize| -> Vec<std::thread::JoinHandle<(u16, HashMap<String, String>)>> {
        (0..n)
            .map(|_| {
                let (addr, png) = (addr.to_string(), png.clone());
                std::thread::spawn(move || {
                    let (s, h, _) = http(&addr, "POST", "/v1/classify", &[], &png);
                    (s, h)
                })
            })
            .collect()
    };

    let server = Server::start(&model, &["--ep", "cpu", "--max-batch", "1", "--max-queue", "1", "--threads", "1"]);
    server.wait_ready();
    let results: Vec<_> = fire(&server.addr, 12).into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(ok >= 2 && !busy.is_empty(), "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(busy.iter().all(|r| r.1.get("retry-after").map(String::as_str) == Some("1")));
    drop(server);

    let server = Server::start(&model, &["--ep", "cpu", "--max-batch", "1", "--max-queue", "8", "--threads", "1"]);
    server.wait_ready();
    let in_flight = fire(&server.addr, 4);
    std::thread::sleep(Duration::from_millis(150));
    let (code, log) = server.stop();
    let statuses: Vec<u16> = in_flight.into_iter().map(|h| h.join().unwrap().0).collect();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(statuses, [200; 4], "{log}");
    assert!(log.contains("SIGTERM: stopping") && log.contains("stopped"), "{log}");

    // An upload that stalls holds the drain only for --drain-seconds.
    let server = Server::start(&model, &["--ep", "cpu", "--drain-seconds", "1"]);
    server.wait_ready();
    let mut stalled = std::net::TcpStream::connect(&server.addr).unwrap();
    std::io::Write::write_all(
        &mut stalled,
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = std::time::Instant::now();
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}: {log}", t.elapsed());
    assert!(log.contains("requests still open after 1 s are cut"), "{log}");
}

/// A model that fails at run time on some inputs (here any white pixel): that request gets 500
/// with ONNX Runtime's reason, the log says it in one line, and the server stays ready and
/// answers the next requests; requests batched together with it still get their results.
#[test]
fn a_model_error_fails_its_request_not_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "fails_on_white");
    let png = |rgb: [u8; 3]| png(&colour_image(rgb, 40, 40));
    let server = Server::start(&model, &["--ep", "cpu", "--max-batch", "4"]);
    server.wait_ready();
    for _ in 0..2 {
        let (status, _, body) = http(&server.addr, "POST", "/v1/classify", &[], &png([255, 255, 255]));
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("out of data bounds"), "{body}");
        let (status, _, body) = http(&server.addr, "POST", "/v1/classify", &[], &png(RED));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["label"], "red");
    }
    assert_eq!(http(&server.addr, "GET", "/v2/health/ready", &[], b"").0, 200);
    let (_, _, metrics) = http(&server.addr, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("infer_requests_total{route=\"/v1/classify\",status=\"500\"} 2"), "{metrics}");
    assert!(metrics.contains("infer_images_total 2\n"), "only the classified images count: {metrics}");
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("500 /v1/classify")).collect();
    assert_eq!(errors.len(), 2, "{log}");
    assert!(errors.iter().all(|l| l.contains("out of data bounds")), "{log}");

    // White and red requests at once, merged into shared batches by a long delay: only the
    // white ones fail.
    let server = Server::start(&model, &["--ep", "cpu", "--max-batch", "16", "--max-delay-ms", "400"]);
    server.wait_ready();
    let (white, red) = (png([255, 255, 255]), png(RED));
    let per_round = 12;
    let model_calls = || -> usize {
        let (_, _, metrics) = http(&server.addr, "GET", "/metrics", &[], b"");
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        let count = metrics.lines().find_map(|l| l.strip_prefix("infer_batch_size_count ")).map(str::trim);
        count.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{metrics}"))
    };
    // More model calls than requests means some batch held several requests, failed, and was
    // run again one request at a time; a few rounds make sure that happened.
    let mut sent = 0;
    for _ in 0..5 {
        let replies: Vec<(bool, u16)> = (0..per_round)
            .map(|i| {
                let (addr, body) = (server.addr.clone(), if i % 2 == 0 { white.clone() } else { red.clone() });
                std::thread::spawn(move || (i % 2 == 0, http(&addr, "POST", "/v1/classify", &[], &body).0))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        for (is_white, status) in &replies {
            assert_eq!(*status, if *is_white { 500 } else { 200 }, "{replies:?}");
        }
        sent += per_round;
        if model_calls() > sent {
            break;
        }
    }
    assert!(model_calls() > sent, "no batch ever held two requests ({sent} requests)");
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Request bodies held at once stay under --max-inflight-mb: an upload beyond is answered 503
/// with Retry-After before its body is read, counted in /metrics; once the bodies in flight
/// are answered, uploads are admitted again.
#[test]
fn request_bodies_in_flight_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let server = Server::start(&model, &["--ep", "cpu", "--max-body-mb", "1", "--max-inflight-mb", "2"]);
    server.wait_ready();
    // Two uploads of 900 kB each are under way (headers and part of the body sent)...
    let start_upload = || {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        let head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 900000\r\n\r\n";
        std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
        std::io::Write::write_all(&mut s, &[0u8; 1000]).unwrap();
        s
    };
    let mut held = vec![start_upload(), start_upload()];
    std::thread::sleep(Duration::from_millis(300));
    let (_, _, metrics) = http(&server.addr, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(metrics.contains("infer_inflight_body_bytes 1800192"), "two bodies of 879 KiB held: {metrics}");
    // ...so a third, concurrent one is refused at once, whatever its body.
    let png = png(&colour_image(RED, 40, 40));
    let concurrent: Vec<(u16, HashMap<String, String>)> = (0..4)
        .map(|_| {
            let (addr, body) = (server.addr.clone(), [png.clone(), vec![0u8; 400_000]].concat());
            std::thread::spawn(move || {
                let (s, h, _) = http(&addr, "POST", "/v1/classify", &[], &body);
                (s, h)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    for (status, headers) in &concurrent {
        assert_eq!(*status, 503, "{concurrent:?}");
        assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"));
    }
    // Small requests still fit beside the held bodies.
    assert_eq!(http(&server.addr, "POST", "/v1/classify", &[], &png).0, 200);
    let (_, _, metrics) = http(&server.addr, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(metrics.contains("infer_refused_inflight_total 4"), "{metrics}");
    // The held uploads finish (their bodies are not images: 400 each); then there is room again.
    for s in &mut held {
        std::io::Write::write_all(s, &vec![0u8; 899_000]).unwrap();
    }
    for mut s in held {
        let mut reply = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut reply);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    }
    let big = [png.clone(), vec![0u8; 900_000]].concat();
    let (status, _, body) = http(&server.addr, "POST", "/v1/classify", &[], &big);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// What the log says of failed requests: readiness polls while the model loads are not
/// logged, bad images are, with their reason, but at a bounded rate.
#[test]
fn failed_requests_are_logged_with_a_bounded_rate_and_probes_not_at_all() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let server = Server::start(&model, &["--ep", "cpu"]);
    let polls_while_loading = server.wait_ready();
    let bad = b"not an image at all".to_vec();
    for _ in 0..60 {
        assert_eq!(http(&server.addr, "POST", "/v1/classify?name=junk.png", &[], &bad).0, 400);
    }
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(polls_while_loading > 0, "the model loaded before the first poll: nothing to check");
    assert!(!log.contains("/v2/health/ready"), "readiness polls logged: {log}");
    let bad_lines: Vec<&str> = log.lines().filter(|l| l.starts_with("400 /v1/classify")).collect();
    assert!(!bad_lines.is_empty() && bad_lines.len() <= 20, "{} lines: {log}", bad_lines.len());
    assert!(bad_lines.iter().all(|l| l.ends_with("junk.png: not an image (unrecognised format)")), "{log}");
}
