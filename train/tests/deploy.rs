//! The distributed-training examples in `deploy/`, checked as far as they can be without a
//! cluster: the PyTorchJob parses, its pods run the same `train` command line, one `train`
//! accepts; the Slurm script is valid bash whose `train` line `train` accepts, and which, run
//! with stand-ins for `scontrol`, `srun` and `train`, gives every task the launcher's variables
//! a rank needs (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use test_support::{repo_root, run_python};

const BIN: &str = env!("CARGO_BIN_EXE_train");

/// Whether `train` parses `args` (each value checked; nothing runs: `--help` ends the parse).
fn accepted(args: &[String]) {
    let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "train {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str())
}

#[test]
fn the_pytorchjob_runs_one_train_command_line_on_every_pod() {
    let path = repo_root().join("deploy/k8s/train-pytorchjob.yaml");
    let docs: Vec<Value> = serde_json::from_str(&run_python("read_yaml.py", &[path.as_os_str()])).unwrap();
    let [job] = docs.as_slice() else { panic!("one document expected: {docs:?}") };
    assert_eq!(job["apiVersion"], "kubeflow.org/v1");
    assert_eq!(job["kind"], "PyTorchJob");
    let specs = &job["spec"]["pytorchReplicaSpecs"];
    assert_eq!(specs["Master"]["replicas"], 1, "the Master is rank 0, which hosts the rendezvous");
    assert!(specs["Worker"]["replicas"].as_u64().unwrap() >= 1);
    let mut lines = Vec::new();
    for role in ["Master", "Worker"] {
        let containers = specs[role]["template"]["spec"]["containers"].as_array().unwrap();
        // The training operator injects its variables into the container named "pytorch".
        let c = containers
            .iter()
            .find(|c| c["name"] == "pytorch")
            .unwrap_or_else(|| panic!("{role}: no pytorch container"));
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1, "{role}: one GPU, one rank per pod");
        let (command, args) = (strings(&c["command"]), strings(&c["args"]));
        lines.push((command, args));
    }
    assert_eq!(lines[0], lines[1], "every rank runs the same command line");
    let (command, args) = &lines[0];
    accepted(args);
    let out = value(args, "--out").unwrap();
    assert!(args.iter().any(|a| a == "--sync-bn"));
    // The wrapper resumes from the run's own checkpoint, with train's arguments after "train".
    assert_eq!(command[..2], ["/bin/sh", "-c"]);
    assert_eq!(command.last().map(String::as_str), Some("train"));
    assert!(command[2].contains(&format!("--resume {out}/last.pt")), "{}", command[2]);
    let resumed: Vec<String> = args.iter().cloned().chain(["--resume".into(), format!("{out}/last.pt")]).collect();
    accepted(&resumed);
}

/// Writes an executable script.
fn script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/usr/bin/env bash\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_slurm_script_gives_each_task_a_rank_and_a_train_command_line_train_accepts() {
    let sbatch = repo_root().join("deploy/slurm/train.sbatch");
    let out = Command::new("bash").arg("-n").arg(&sbatch).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&sbatch).unwrap();
    let option = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(&format!("#SBATCH --{name}="))).map(|v| v.trim().parse().unwrap())
    };
    let (nodes, tasks, gpus) =
        (option("nodes").unwrap(), option("ntasks-per-node").unwrap(), option("gpus-per-node").unwrap());
    assert_eq!(tasks, gpus, "one task per GPU");
    assert!(nodes >= 2, "a multi-node example");
    assert!(text.contains("#SBATCH --requeue"));

    // Slurm's side played by stand-ins: 2 nodes of 2 tasks; `train` prints what it was given.
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    script(&bin, "scontrol", r#"[[ "$1 $2" == "show hostnames" ]] && printf 'gpu-node-07\ngpu-node-08\n'"#);
    script(
        &bin,
        "srun",
        r#"while [[ "$1" == --* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$((i % 2)) "$@" || exit 1
done"#,
    );
    script(
        &bin,
        "train",
        r#"echo "RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE MASTER=$MASTER_ADDR:$MASTER_PORT"
printf '%s\n' "$@" > "$ARGS_OUT.$RANK""#,
    );
    let data = tmp.path().join("data");
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let run = |expect_resume: bool| {
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("bash")
            .arg(&sbatch)
            .arg(&data)
            .arg(&models)
            .env("PATH", path)
            .env("SLURM_JOB_NODELIST", "gpu-node-[07-08]")
            .env("SLURM_NTASKS", "4")
            .env("SLURM_CPUS_PER_TASK", "6")
            .env("ARGS_OUT", tmp.path().join("args"))
            .env_remove("MASTER_PORT")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines,
            [
                "RANK=0 LOCAL_RANK=0 WORLD_SIZE=4 MASTER=gpu-node-07:29500",
                "RANK=1 LOCAL_RANK=1 WORLD_SIZE=4 MASTER=gpu-node-07:29500",
                "RANK=2 LOCAL_RANK=0 WORLD_SIZE=4 MASTER=gpu-node-07:29500",
                "RANK=3 LOCAL_RANK=1 WORLD_SIZE=4 MASTER=gpu-node-07:29500",
            ]
        );
        let args: Vec<String> =
            std::fs::read_to_string(tmp.path().join("args.3")).unwrap().lines().map(String::from).collect();
        assert_eq!(args[0], data.to_str().unwrap());
        assert_eq!(value(&args, "--out"), models.to_str());
        assert_eq!(value(&args, "--workers"), Some("6"));
        assert_eq!(value(&args, "--resume").is_some(), expect_resume, "{args:?}");
        accepted(&args);
    };
    run(false);
    // A requeued job finds the checkpoint and resumes.
    std::fs::write(models.join("last.pt"), b"").unwrap();
    run(true);
}
