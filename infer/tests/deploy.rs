//! The deployment examples in `deploy/` as far as they can be checked without a cluster or a
//! container engine: the manifests parse; every command line in them (Kubernetes args,
//! KServe args, the Dockerfile's CMD, the Slurm script) is one `infer` accepts; every probe
//! points at the container's port and at a route the running server answers 200 on once
//! ready; the image runs as a non-root user with ONNX Runtime's library where `infer` looks.

#![cfg(feature = "server")]

use test_support as common;
mod support;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;
use support::{http, Server};

fn manifests() -> Vec<Value> {
    let dir = repo_root().join("deploy/k8s");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let args: Vec<&std::ffi::OsStr> = files.iter().map(|p| p.as_os_str()).collect();
    serde_json::from_str(&run_python("read_yaml.py", &args)).unwrap()
}

/// The containers of a Deployment, Job or InferenceService.
fn containers(doc: &Value) -> Vec<&Value> {
    let spec = &doc["spec"];
    let list = match doc["kind"].as_str() {
        Some("Deployment" | "Job") => &spec["template"]["spec"]["containers"],
        Some("InferenceService") => &spec["predictor"]["containers"],
        _ => return vec![],
    };
    list.as_array().unwrap().iter().collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// Whether `infer` parses `args` (each value checked; nothing run: `--help` ends the parse).
fn accepted(args: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_infer")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "infer {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The value after `flag`.
fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str())
}

#[test]
fn manifests_parse_and_their_probes_reach_real_routes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let docs = manifests();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in ["Deployment", "Service", "InferenceService", "Job"] {
        assert!(kinds.contains(&kind), "no {kind} in deploy/k8s: {kinds:?}");
    }
    let mut probed = 0;
    for doc in &docs {
        for c in containers(doc) {
            // Kubernetes expands $(VAR) from the container's env; any number stands in.
            let args: Vec<String> = strings(&c["args"]).iter().map(|a| a.replace("$(PART)", "3")).collect();
            accepted(&args);
            if args[0] != "serve" {
                assert_eq!(value(&args, "--shard"), Some("auto/8"));
                assert_eq!(doc["spec"]["completions"], 8, "the shard count is the Job's completions");
                assert_eq!(doc["spec"]["completionMode"], "Indexed");
                continue;
            }
            let port: u64 = value(&args, "--port").unwrap().parse().unwrap();
            assert_eq!(value(&args, "--host"), Some("0.0.0.0"), "reachable from outside the pod");
            let ports = c["ports"].as_array().unwrap();
            assert_eq!(ports[0]["containerPort"], port);
            // The same server, on loopback, with the test's model.
            let mut local: Vec<OsString> = args.iter().map(OsString::from).collect();
            let at = |flag: &str| args.iter().position(|a| a == flag).unwrap() + 1;
            local[at("--model")] = model.clone().into();
            local[at("--host")] = "127.0.0.1".into();
            local[at("--port")] = "0".into();
            let server = Server::spawn(&local);
            server.wait_ready();
            for probe in ["livenessProbe", "readinessProbe"] {
                let get = &c[probe]["httpGet"];
                let path = get["path"].as_str().unwrap();
                assert!(path.starts_with("/v2/health/"), "{probe}: {path}");
                let named = ports.iter().any(|p| p["name"] == get["port"] && p["containerPort"] == port);
                assert!(get["port"] == port || named, "{probe} port {} is not the server's", get["port"]);
                assert_eq!(http(&server.addr, "GET", path, &[], b"").0, 200, "{probe} {path}");
                probed += 1;
            }
            let name = value(&args, "--name").unwrap();
            assert_eq!(http(&server.addr, "GET", &format!("/v2/models/{name}/ready"), &[], b"").0, 200);
            let (code, log) = server.stop();
            assert_eq!(code, Some(0), "{log}");
        }
    }
    assert_eq!(probed, 4);

    // The Service sends its port to the Deployment's named container port.
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]);
    let target = &service["spec"]["ports"][0]["targetPort"];
    assert!(containers(deployment)[0]["ports"].as_array().unwrap().iter().any(|p| &p["name"] == target));
}

#[test]
fn the_image_runs_infer_as_a_non_root_user_with_its_library_beside_it() {
    let text = std::fs::read_to_string(repo_root().join("deploy/Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let stages = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "a multi-stage build");
    let instruction =
        |name: &str| -> Vec<&str> { lines.iter().filter_map(|l| l.strip_prefix(name).map(str::trim)).collect() };
    let user = instruction("USER ");
    assert!(user.last().is_some_and(|u| !u.starts_with("root") && !u.starts_with('0')), "{user:?}");
    let entry: Vec<String> = serde_json::from_str(instruction("ENTRYPOINT ")[0]).unwrap();
    let cmd: Vec<String> = serde_json::from_str(instruction("CMD ")[0]).unwrap();
    accepted(&cmd);
    assert_eq!(value(&cmd, "--host"), Some("0.0.0.0"));
    let exposed = instruction("EXPOSE ");
    assert_eq!(exposed, [value(&cmd, "--port").unwrap()]);
    // ONNX Runtime's library goes where `infer` looks first after ORT_DYLIB_PATH.
    let exe_dir = Path::new(&entry[0]).parent().unwrap();
    let lib = exe_dir.join("libonnxruntime.so");
    assert!(instruction("COPY ").iter().any(|c| c.ends_with(lib.to_str().unwrap())), "{lib:?} not copied");
    assert!(infer::runtime::candidates().iter().any(|c| c.file_name() == lib.file_name()));
    let model = value(&cmd, "--model").unwrap();
    assert!(instruction("COPY ").iter().any(|c| c.ends_with(model)), "the model is not in the image");
}

#[test]
fn the_slurm_script_is_valid_bash_with_flags_infer_accepts() {
    let script = repo_root().join("deploy/slurm/classify.sbatch");
    let out = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("#SBATCH --array="));
    // The srun line, joined, with its shell words taken apart.
    let srun = text.split("srun ").nth(1).unwrap().replace("\\\n", " ");
    let words: Vec<String> = srun
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|w| if w.starts_with('"') || w.starts_with('$') { "x1".into() } else { w.to_string() })
        .collect();
    assert_eq!(value(&words, "--shard"), Some("auto"));
    assert!(words.contains(&"--resume".to_string()));
    let threads = words.iter().position(|w| w == "--threads").unwrap();
    let mut words = words;
    words[threads + 1] = "4".into();
    accepted(&words);
}
