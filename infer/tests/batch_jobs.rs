//! Large batch runs as cluster jobs run them: `--shard` splits the input over machines (by
//! hand, Kubernetes indexed Jobs, Slurm arrays) and `--output FILE --resume` continues a run
//! that was killed, without redoing, duplicating or tearing records.

use test_support as common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const JOB_VARS: [&str; 5] = [
    "JOB_COMPLETION_INDEX",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
];

fn infer(model: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infer"));
    cmd.args(["--ep", "cpu", "--model"]).arg(model);
    for v in JOB_VARS {
        cmd.env_remove(v);
    }
    cmd
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `n` small images of different colours in `dir`.
fn inputs(dir: &Path, n: u32) -> PathBuf {
    let d = dir.join("images");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    for i in 0..n {
        let sub = if i % 3 == 0 { "sub/" } else { "" };
        let rgb = [(i * 37 % 256) as u8, (i * 91 % 256) as u8, (i * 53 % 256) as u8];
        colour_image(rgb, 20 + i, 24).save(d.join(format!("{sub}{i:03}.png"))).unwrap();
    }
    d
}

/// Records by path (label and confidence, or the error), checking each path appears once.
fn records(jsonl: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in jsonl.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let value = match r["label"].as_str() {
            Some(l) => format!("{l} {:.5}", r["confidence"].as_f64().unwrap()),
            None => format!("error {}", r["error"]),
        };
        assert!(out.insert(r["path"].as_str().unwrap().to_string(), value).is_none(), "twice: {line}");
    }
    out
}

#[test]
fn shards_are_disjoint_and_cover_the_input_by_hand_kubernetes_and_slurm() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let dir = inputs(tmp.path(), 25);
    let missing = tmp.path().join("missing.png");
    let run = |extra: &[&str], env: &[(&str, &str)]| -> Output {
        let mut cmd = infer(&model);
        cmd.args(["--format", "jsonl"]).args(extra).arg(&dir).arg(&missing);
        cmd.envs(env.iter().copied());
        cmd.output().unwrap()
    };
    let whole = run(&[], &[]);
    assert_eq!(whole.status.code(), Some(2), "{}", stderr(&whole));
    let whole = records(&String::from_utf8_lossy(&whole.stdout));
    assert_eq!(whole.len(), 26);

    let mut union = BTreeMap::new();
    let mut parts = Vec::new();
    for k in 0..3 {
        let out = run(&["--shard", &format!("{k}/3")], &[]);
        assert!(stderr(&out).contains(&format!("shard {k}/3: ")), "{}", stderr(&out));
        let part = records(&String::from_utf8_lossy(&out.stdout));
        assert!((8..=9).contains(&part.len()), "{}", part.len());
        for (p, v) in &part {
            assert!(union.insert(p.clone(), v.clone()).is_none(), "{p} in two shards");
        }
        parts.push(part);
    }
    assert_eq!(union, whole);

    // The same parts from the job's environment.
    let k8s = run(&["--shard", "auto/3"], &[("JOB_COMPLETION_INDEX", "1")]);
    assert_eq!(records(&String::from_utf8_lossy(&k8s.stdout)), parts[1], "{}", stderr(&k8s));
    let slurm = [("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "3")];
    let out = run(&["--shard", "auto"], &slurm);
    assert_eq!(records(&String::from_utf8_lossy(&out.stdout)), parts[2], "{}", stderr(&out));

    for (args, env, expect) in [
        (&["--shard", "auto"][..], &[][..], "neither JOB_COMPLETION_INDEX"),
        (
            &["--shard", "auto"],
            &[("JOB_COMPLETION_INDEX", "0")][..],
            "give the Job's completion count as --shard auto/N",
        ),
        (&["--shard", "3/3"], &[], "K counts from 0, so it must be below N"),
        (&["--shard", "1-3"], &[], "is not a shard"),
        (&["--shard", "auto/2"], &[("JOB_COMPLETION_INDEX", "5")], "must be below N"),
    ] {
        let out = run(args, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expect) && err.lines().count() <= 3, "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

/// A run with `--resume` is SIGKILLed part-way (and its file gets a torn last line, as a kill
/// mid-write leaves); the rerun cuts the torn line, skips what is done, and the file ends
/// holding every input exactly once with the results of an uninterrupted run.
#[test]
fn a_killed_run_resumes_without_redoing_duplicating_or_tearing() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tiny_model(tmp.path(), "good");
    // The same outputs as `good`, slowly (about 70 ms an image): time to kill it part-way.
    let slow = tiny_model(tmp.path(), "slow");
    let dir = inputs(tmp.path(), 40);
    let bad = dir.join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let whole = infer(&good).args(["--format", "jsonl"]).arg(&dir).output().unwrap();
    let whole = records(&String::from_utf8_lossy(&whole.stdout));
    assert_eq!(whole.len(), 41);

    let file = tmp.path().join("results.jsonl");
    let resume = |model: &Path| {
        let mut cmd = infer(model);
        cmd.args(["--format", "jsonl", "--batch-size", "2", "--threads", "1", "--resume", "--output"])
            .arg(&file)
            .arg(&dir);
        cmd
    };
    let mut child = resume(&slow).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while std::fs::read_to_string(&file).map_or(0, |t| t.lines().count()) < 6 {
        assert!(started.elapsed() < Duration::from_secs(60), "no records written");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = records(&std::fs::read_to_string(&file).unwrap());
    assert!(before.len() < 41, "the run finished before the kill");
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    std::io::Write::write_all(&mut f, b"{\"path\":\"").unwrap();
    drop(f);

    let out = resume(&good).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("removed an incomplete last record (9 bytes)"), "{err}");
    assert!(err.contains(&format!("resuming: {} of 41 inputs already have records", before.len())), "{err}");
    assert!(err.contains(&format!("(and {} done before)", before.len())), "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(records(&text), whole);

    // Nothing left: says so and succeeds, the file untouched.
    let out = resume(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing to do: the 41 inputs already have records"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}

/// CSV resumes the same way (its header written once); a file that is not ours is refused
/// and left alone; --resume needs a readable format and no --eval.
#[test]
fn csv_resumes_and_foreign_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let dir = inputs(tmp.path(), 12);
    let file = tmp.path().join("r.csv");
    let run = |args: &[&str], paths: &[&Path]| {
        let mut cmd = infer(&model);
        cmd.args(args).arg("--output").arg(&file);
        cmd.args(paths);
        cmd.output().unwrap()
    };
    let csv = ["--format", "csv", "--resume"];
    let first: Vec<PathBuf> = (1..12).filter(|i| i % 3 != 0).map(|i| dir.join(format!("{i:03}.png"))).collect();
    let first: Vec<&Path> = first.iter().map(PathBuf::as_path).collect();
    assert_eq!(run(&csv, &first).status.code(), Some(0));
    let out = run(&csv, &[&dir]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], infer::records::CSV_HEADER);
    assert_eq!(lines.len(), 13, "{text}");
    let paths: BTreeSet<&str> = lines[1..].iter().map(|l| l.split(',').next().unwrap()).collect();
    let expected: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .chain(std::fs::read_dir(dir.join("sub")).unwrap().map(|e| e.unwrap().path()))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(paths, expected.iter().map(String::as_str).collect());

    std::fs::write(&file, "name,size\nx,1\n").unwrap();
    let out = run(&csv, &[&dir]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 1 is not a CSV result record; not resuming"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "name,size\nx,1\n");
    let out = run(&["--resume"], &[&dir]);
    assert!(stderr(&out).contains("--resume needs --format jsonl or csv"), "{}", stderr(&out));
    let out = run(&["--resume", "--eval", "--format", "jsonl"], &[&dir]);
    assert!(stderr(&out).contains("'--resume' cannot be used with '--eval'"), "{}", stderr(&out));
}
