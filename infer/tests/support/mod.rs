//! A server under test: `infer serve` started on a loopback port the system picks, and a
//! minimal HTTP/1.1 client that shows exactly what was answered.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server and its address.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: std::sync::mpsc::Receiver<String>,
}

impl Server {
    /// `infer serve --port 0 --name m --model MODEL ARGS...`.
    pub fn start(model: &Path, args: &[&str]) -> Server {
        let mut all: Vec<OsString> = ["serve", "--port", "0", "--name", "m", "--model"].map(OsString::from).to_vec();
        all.push(model.into());
        all.extend(args.iter().map(OsString::from));
        Server::spawn(&all)
    }

    /// `infer ARGS...`, which must start a server; returns once it says where it listens.
    pub fn spawn(args: &[OsString]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_infer")).args(args).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).expect("the server says where it listens");
        let addr = first.split("http://").nth(1).and_then(|s| s.split_whitespace().next()).expect(&first).to_string();
        Server { child, addr, log: rx }
    }

    /// Waits (at most 60 s) until the model is ready; returns how many polls were answered
    /// 503 (the model still loading) before.
    pub fn wait_ready(&self) -> usize {
        let started = Instant::now();
        let mut loading = 0;
        loop {
            match http(&self.addr, "GET", "/v2/health/ready", &[], b"").0 {
                200 => return loading,
                503 => loading += 1,
                other => panic!("readiness answered {other}"),
            }
            assert!(started.elapsed() < Duration::from_secs(60), "never ready");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM; returns the exit code and the rest of the log.
    pub fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        // A server that does not stop fails the test instead of hanging it.
        let asked = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(asked.elapsed() < Duration::from_secs(60), "the server did not stop within 60 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let log: Vec<String> = self.log.try_iter().collect();
        (status.code(), log.join("\n"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// One HTTP/1.1 request: status, headers (lower-case names), body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    // A server may answer (413) before the whole body is sent and close: not an error here.
    let _ = s.write_all(req.as_bytes()).and_then(|_| s.write_all(body));
    // The head, then the body: as long as Content-Length says (a peer may keep the connection
    // open whatever the request asked), else up to the end.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(n > 0, "the connection closed before a response head: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: HashMap<String, String> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))).collect();
    let mut body = raw.split_off(end + 4);
    match headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            let _ = s.read_to_end(&mut body);
        }
    }
    if headers.get("transfer-encoding").is_some_and(|v| v == "chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[nl + 4 + size..];
        }
        body = out;
    }
    (status, headers, body)
}

/// An image's bytes as a PNG file.
pub fn png(image: &image::RgbImage) -> Vec<u8> {
    let mut v = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png).unwrap();
    v
}

/// A `multipart/form-data` body of named files, and its Content-Type.
pub fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "XbOuNdArY";
    let mut form = Vec::new();
    for (name, data) in files {
        form.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        form.extend(*data);
        form.extend(b"\r\n");
    }
    form.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), form)
}
