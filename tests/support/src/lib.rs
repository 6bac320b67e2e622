//! Helpers shared by the tests of every crate of the workspace, as a dev-dependency: paths
//! into the repository, the venv's Python, the seed data, fixtures and generated images, and
//! processes started under a deadline ([`Running`]).
//! It depends on neither `infer` nor `train`, so both can use it; the `train` binary's runs are
//! given its path ([`TrainFixture`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod process;
pub use process::{free_port, launcher_env, run_all, Running};

/// The repository root.
pub fn repo_root() -> PathBuf {
    // This crate lives in tests/support/.
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("tests/support is two levels down").to_path_buf()
}

/// The project's venv Python (made by `scripts/setup.sh`), with unbuffered output.
pub fn python() -> Command {
    let exe = repo_root().join(".venv/bin/python");
    assert!(exe.exists(), "{} missing: run scripts/setup.sh first", exe.display());
    let mut cmd = Command::new(exe);
    cmd.env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Runs a script from `tests/python/` with the venv's Python and panics with its output on failure.
pub fn run_python(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = python().arg(repo_root().join("tests/python").join(script)).args(args).output().expect("start python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The seed's dataset, when present (`data/hymenoptera_data`, else `../shared/data/...`).
pub fn seed_data() -> Option<PathBuf> {
    let root = repo_root();
    [root.join("data/hymenoptera_data"), root.join("../shared/data/hymenoptera_data")]
        .into_iter()
        .find(|p| p.join("train").is_dir() && p.join("val").is_dir())
}

/// A folder of `tests/fixtures/`.
pub fn fixtures(folder: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(folder)
}

/// The files of a fixtures folder (not its scripts and notes), sorted.
pub fn fixture_files(folder: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures(folder))
        .expect("fixtures folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| !p.extension().is_some_and(|e| e == "py" || e == "md"))
        .collect();
    files.sort();
    files
}

/// A tiny 3-class (red, green, blue) ONNX model, see `tests/python/make_tiny_onnx.py`.
pub fn tiny_model(dir: &Path, kind: &str) -> PathBuf {
    let out = dir.join(format!("tiny_{kind}.onnx"));
    run_python("make_tiny_onnx.py", &[out.as_os_str(), "--kind".as_ref(), kind.as_ref()]);
    out
}

/// A solid-colour image with a little texture.
pub fn colour_image(rgb: [u8; 3], w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let t = ((x * 7 + y * 3) % 16) as u8;
        image::Rgb([rgb[0].saturating_add(t), rgb[1].saturating_add(t), rgb[2].saturating_add(t)])
    })
}

pub const RED: [u8; 3] = [220, 30, 30];
pub const GREEN: [u8; 3] = [30, 200, 40];
pub const BLUE: [u8; 3] = [20, 40, 220];

/// `root/{train,val}/<class>/<i>.png`, each class with its own colour.
pub fn image_folder(root: &Path, classes: &[&str], train: usize, val: usize) {
    for split in ["train", "val"] {
        class_folders(&root.join(split), classes, if split == "train" { train } else { val });
    }
}

/// `root/<class>/<i>.png`, `n` per class, each class with its own colour: a data set without a
/// validation folder.
pub fn class_folders(root: &Path, classes: &[&str], n: usize) {
    for (c, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).expect("create class folder");
        for i in 0..n {
            let img = image::RgbImage::from_fn(64 + (i as u32 % 3) * 8, 48, |x, y| {
                let mut p = [40u8, 40, 40];
                p[c % 3] = 200;
                image::Rgb([p[0].wrapping_add((x + i as u32) as u8), p[1].wrapping_add(y as u8), p[2]])
            });
            img.save(dir.join(format!("{i}.png"))).expect("save image");
        }
    }
}

/// The `train` binary at `bin` (`env!("CARGO_BIN_EXE_train")`) as a command that never reaches
/// the network: a proxy on a closed local port refuses at once.
pub fn train_command(bin: impl AsRef<Path>) -> Command {
    let mut cmd = Command::new(bin.as_ref());
    cmd.env("ALL_PROXY", "http://127.0.0.1:9").env("HTTPS_PROXY", "http://127.0.0.1:9");
    cmd
}

/// What a command printed on stderr.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs of the `train` binary on an image folder inside a temporary folder, which every output
/// folder named here sits in too: the fixture of the end-to-end tests.
pub struct TrainFixture {
    pub tmp: tempfile::TempDir,
    /// The image folder.
    pub data: PathBuf,
    bin: PathBuf,
}

/// A run that succeeded: its output folder and what it printed (the result on stdout,
/// progress and notes on stderr).
pub struct TrainedRun {
    pub out: PathBuf,
    pub stdout: String,
    pub stderr: String,
}

impl TrainFixture {
    /// `tmp/data` holding `train` and `val` images of each class ([`image_folder`]).
    pub fn new(bin: impl AsRef<Path>, classes: &[&str], train: usize, val: usize) -> TrainFixture {
        TrainFixture::with_data(bin, |tmp| {
            let data = tmp.join("data");
            image_folder(&data, classes, train, val);
            data
        })
    }

    /// The image folder that `make` returns, given the temporary folder to make it in.
    pub fn with_data(bin: impl AsRef<Path>, make: impl FnOnce(&Path) -> PathBuf) -> TrainFixture {
        let tmp = tempfile::tempdir().expect("temporary folder");
        let data = make(tmp.path());
        TrainFixture { tmp, data, bin: bin.as_ref().to_path_buf() }
    }

    /// `name` inside the temporary folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The binary, kept off the network ([`train_command`]).
    pub fn command(&self) -> Command {
        train_command(&self.bin)
    }

    /// A short CPU run from random weights on `data` into `out`; `extra` may set `--epochs` or
    /// `--device` itself (else 1 and cpu).
    pub fn quick_on(&self, data: &Path, out: &Path, extra: &[&str]) -> Command {
        let mut cmd = self.command();
        cmd.arg(data).arg("--out").arg(out).arg("--no-pretrained").args(extra);
        for (flag, default) in [("--epochs", "1"), ("--device", "cpu")] {
            if !extra.contains(&flag) {
                cmd.args([flag, default]);
            }
        }
        cmd
    }

    /// [`TrainFixture::quick_on`] the fixture's image folder, into `tmp/<out>`.
    pub fn quick(&self, out: &str, extra: &[&str]) -> Command {
        self.quick_on(&self.data, &self.path(out), extra)
    }

    /// Runs [`TrainFixture::quick`] and asserts that it succeeded.
    pub fn train(&self, out: &str, extra: &[&str]) -> TrainedRun {
        let run = self.quick(out, extra).output().expect("start train");
        let stderr = stderr_of(&run);
        assert!(run.status.success(), "{stderr}");
        TrainedRun { out: self.path(out), stdout: String::from_utf8_lossy(&run.stdout).into_owned(), stderr }
    }
}

impl TrainedRun {
    /// A fixture of `classes` (4 training and 2 validation images each) and one
    /// [`TrainFixture::train`] run of it into `tmp/out`.
    pub fn new(bin: impl AsRef<Path>, classes: &[&str], extra: &[&str]) -> (TrainFixture, TrainedRun) {
        let fixture = TrainFixture::new(bin, classes, 4, 2);
        let run = fixture.train("out", extra);
        (fixture, run)
    }
}

/// SplitMix64: seeded choices that are the same on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}
