//! The web page of `infer serve`, driven by a real headless browser (Debian's Chromium through
//! ChromeDriver's WebDriver API): an image chosen on the page is classified through the
//! server's own routes, and the page shows the label the CLI gives the same file.

#![cfg(feature = "server")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{http, Server};
use test_support::*;

/// A ChromeDriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    addr: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{program} not found: scripts/setup.sh installs Debian's chromium and chromium-driver")
    })
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new(find("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver { child, addr: format!("127.0.0.1:{port}") };
        let started = Instant::now();
        while std::net::TcpStream::connect(&driver.addr).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" || method == "DELETE" { Vec::new() } else { body.to_string().into_bytes() };
        let (status, _, reply) = http(&self.addr, method, path, &[("Content-Type", "application/json")], &body);
        let v: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }
}

/// A headless Chromium session; closed when dropped (before its driver).
struct Browser<'d> {
    driver: &'d Driver,
    session: String,
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = http(&self.driver.addr, "DELETE", &format!("/session/{}", self.session), &[], b"");
    }
}

impl<'d> Browser<'d> {
    fn open(driver: &'d Driver, profile: &Path) -> Browser<'d> {
        // The flags a closed network needs: no background connections, no sandbox as root.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": find("chromium").to_string_lossy(), "args": args}
        }}});
        let v = driver.call("POST", "/session", caps);
        Browser { driver, session: v["sessionId"].as_str().expect("a session id").to_string() }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.driver.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn script(&self, js: &str) -> Value {
        self.call("POST", "/execute/sync", json!({"script": js, "args": []}))
    }

    /// Polls `js` until it returns something other than null.
    fn wait_for(&self, js: &str) -> Value {
        let started = Instant::now();
        loop {
            let v = self.script(js);
            if !v.is_null() {
                return v;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for: {js}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An image to classify: a seed image when the data set is there, else a generated one.
fn seed_image(dir: &Path) -> PathBuf {
    if let Some(d) = seed_data() {
        let ants = d.join("val/ants");
        let mut files: Vec<PathBuf> = std::fs::read_dir(ants).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        return files[0].clone();
    }
    let p = dir.join("picture.png");
    colour_image(GREEN, 120, 90).save(&p).unwrap();
    p
}

#[test]
fn the_page_classifies_an_image_in_a_real_browser_as_the_cli_does() {
    let tmp = tempfile::tempdir().unwrap();
    // `UI_MODEL=FILE` shows another model (the README's screenshot is of a trained one).
    let model = std::env::var_os("UI_MODEL").map_or_else(|| tiny_model(tmp.path(), "good"), PathBuf::from);
    let image = seed_image(tmp.path());
    let cli = Command::new(env!("CARGO_BIN_EXE_infer"))
        .args(["--ep", "cpu", "--format", "jsonl", "--model"])
        .arg(&model)
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(0), "{}", String::from_utf8_lossy(&cli.stderr));
    let record: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let expected = record["label"].as_str().unwrap().to_string();

    let server = match std::env::var_os("UI_MODEL") {
        // Under the name a user's server would have.
        Some(_) => Server::spawn(&[
            "serve".into(),
            "--port".into(),
            "0".into(),
            "--ep".into(),
            "cpu".into(),
            "--model".into(),
            model.clone().into(),
        ]),
        None => Server::start(&model, &["--ep", "cpu"]),
    };
    server.wait_ready();
    let driver = Driver::start();
    let browser = Browser::open(&driver, &tmp.path().join("profile"));
    browser.call("POST", "/url", json!({"url": format!("http://{}/", server.addr)}));
    let facts = browser
        .wait_for("const f = document.getElementById('facts').textContent; return f.includes('provider') ? f : null;");
    let facts = facts.as_str().unwrap();
    assert!(facts.contains("CPUExecutionProvider"), "{facts}");
    let classes: usize = facts
        .split(" classes")
        .next()
        .and_then(|s| s.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no class count in {facts}"));
    if std::env::var_os("UI_MODEL").is_none() {
        assert_eq!(classes, 3, "{facts}");
    }
    let input = browser.call("POST", "/element", json!({"using": "css selector", "value": "#files"}));
    let element = input.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_string();
    browser.call("POST", &format!("/element/{element}/value"), json!({"text": image.to_string_lossy()}));
    let shown = browser.wait_for(
        "const c = document.querySelector('.result'); \
         return c && c.dataset.done ? (c.dataset.label || ('error: ' + c.dataset.error)) : null;",
    );
    assert_eq!(shown.as_str(), Some(expected.as_str()), "the page shows another label than the CLI");
    let bars = browser.script("return document.querySelectorAll('.result .row').length;");
    assert_eq!(bars, json!(classes.min(5)), "top-k bars for the model's {classes} classes");
    // `UI_SCREENSHOT=FILE` keeps a picture of the page (the README's).
    if let Some(path) = std::env::var_os("UI_SCREENSHOT") {
        use base64::Engine;
        let png = browser.call("GET", "/screenshot", Value::Null);
        std::fs::write(path, base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap()).unwrap();
    }
    drop(browser);
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn the_page_is_one_offline_file_and_no_ui_turns_it_off() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let args = ["serve", "--port", "0", "--ep", "cpu", "--name", "ants</script>", "--model"];
    let mut args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    args.push(model.clone().into());
    let server = Server::spawn(&args);
    server.wait_ready();
    let (status, headers, body) = http(&server.addr, "GET", "/", &[], b"");
    let page = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("text/html"), "{headers:?}");
    // Nothing fetched from elsewhere: no external scripts, styles, fonts or images.
    for external in ["http://", "https://", "src=\"//", "@import", "url("] {
        assert!(!page.contains(external), "the page refers to something outside it: {external}");
    }
    // The model's name is a JSON string, its '<' escaped so it cannot close the script.
    assert!(page.contains(r#"const MODEL = "ants\u003c/script>";"#), "{page}");
    server.stop();

    let server = Server::start(&model, &["--ep", "cpu", "--no-ui"]);
    server.wait_ready();
    assert_eq!(http(&server.addr, "GET", "/", &[], b"").0, 404);
    server.stop();
}
