//! Scanning an image folder into training and validation samples, with the layout rules in
//! one place ([`layout`]):
//!
//! - `ROOT/train/<class>/<images>` beside a validation folder — `val/`, else `valid/`
//!   (Roboflow's exports), else `test/` (common on Kaggle), or the one `--val-dir` names;
//! - `ROOT/<class>/<images>`, optionally with `ROOT/val/<class>/<images>` (or `valid/`,
//!   `test/`) whose subfolders are the same classes;
//! - otherwise a seeded, stratified split of the classes' images.
//!
//! `ROOT/train` is taken as the training split only when it holds class folders and nothing but
//! validation folders sits beside it; otherwise it is a class like any other (a data set about
//! vehicles may have a class called `train`). A folder of labelled images that is not used is
//! reported, never ignored in silence. Class names are sorted as torchvision's `ImageFolder`
//! sorts them. Every candidate file is decoded once, in parallel, so unreadable files are
//! reported up front and never reach a batch.

use std::path::{Path, PathBuf};

use infer::files::Ignored;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::DatasetError;

/// Folders taken as the validation set, in order of preference (as Ultralytics does).
pub const VALIDATION_DIRS: &[&str] = &["val", "valid", "test"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

/// A file that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// How the validation set was formed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SplitKind {
    /// From a `val/` folder.
    Folder,
    /// Drawn from the training images.
    Random { fraction: f64, seed: u64 },
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub split: SplitKind,
    /// How the folders were read.
    pub layout: Layout,
    /// Image-named files that could not be decoded.
    pub skipped: Vec<Skipped>,
    /// Files passed over for being neither image-named nor image-like, by kind.
    pub ignored: Ignored,
    /// Files kept although they end before their image data does (JPEGs cut short, decoded
    /// as libjpeg decodes them), sorted.
    pub incomplete: Vec<PathBuf>,
    /// Images with transparent pixels.
    pub transparent: usize,
    /// Images with transparency that are nearly one colour once their alpha is dropped (what
    /// the model sees of them without `--background`), sorted.
    pub blank_without_alpha: Vec<PathBuf>,
}

/// What checking one readable file noticed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileNotes {
    /// The file ends before its image data does (see [`infer::decode::Decoded::incomplete`]).
    pub incomplete: bool,
    /// The image has transparent pixels.
    pub transparent: bool,
    /// ...and is nearly one colour once its alpha is dropped.
    pub blank_without_alpha: bool,
}

impl Dataset {
    /// Images per class, in class order.
    pub fn counts(samples: &[Sample], classes: usize) -> Vec<usize> {
        let mut c = vec![0; classes];
        for s in samples {
            c[s.label] += 1;
        }
        c
    }

    /// How the validation images were chosen: `20% of each class, seed 7`, or the validation
    /// folder.
    pub fn describe_split(&self) -> String {
        match (&self.split, &self.layout.val_dir) {
            (SplitKind::Random { fraction, seed }, _) => format!("{:.0}% of each class, seed {seed}", fraction * 100.0),
            (SplitKind::Folder, Some(dir)) => format!("{}", dir.display()),
            (SplitKind::Folder, None) => "a folder".to_string(),
        }
    }

    /// A fingerprint of the data: every sample's split, class, path below the root and size,
    /// hashed. Two scans of the same files agree; another folder, or files added, removed,
    /// relabelled or rewritten to another size, do not.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        for (split, samples) in [("train", &self.train), ("val", &self.val)] {
            for s in samples {
                let rel = s.path.strip_prefix(&self.root).unwrap_or(&s.path);
                let size = std::fs::metadata(&s.path).map_or(0, |m| m.len());
                h.update(format!("{split}\t{}\t{}\t{size}\n", s.label, rel.display()).as_bytes());
            }
        }
        let hash: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        Fingerprint { files: self.train.len() + self.val.len(), hash }
    }
}

/// What [`Dataset::fingerprint`] gives: enough to tell that a resumed run sees other data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub files: usize,
    pub hash: String,
}

/// How the folders of a data set were read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// The folder whose subfolders are the classes.
    pub class_root: PathBuf,
    /// The validation folder (`<class>/<images>`), if one is used.
    pub val_dir: Option<PathBuf>,
    /// Folders of labelled images not used (another validation candidate), for the report.
    pub unused: Vec<PathBuf>,
    /// The choice made where the layout was ambiguous, to say once.
    pub note: Option<String>,
}

/// Options of [`scan`].
pub struct ScanOptions<'a> {
    /// Fraction of each class drawn for validation when there is no `val/` folder.
    pub val_fraction: f64,
    pub seed: u64,
    /// The validation folder's name under ROOT (`--val-dir`); default: the first of
    /// [`VALIDATION_DIRS`] present.
    pub val_dir: Option<&'a str>,
    /// Checks that a file is a readable image: what it noticed, or the reason it is not.
    pub check: &'a (dyn Fn(&Path) -> Result<FileNotes, String> + Sync),
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let io = |source| DatasetError::Io { path: dir.to_path_buf(), source };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if !is_hidden(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Class folders of `dir`, sorted by name.
fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, DatasetError> {
    let mut out = Vec::new();
    for path in read_dir_sorted(dir)? {
        // Follows symlinks, as ImageFolder does.
        if path.is_dir() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| DatasetError::BadClassName { path: path.clone() })?
                .to_string();
            out.push((name, path));
        }
    }
    // Sorted by the name's characters (as Python sorts str), not by path bytes.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Image-named files below `dir`, recursively and in sorted order; counts the others.
fn files_below(dir: &Path, ignored: &mut Ignored) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            out.extend(files_below(&path, ignored)?);
        } else if infer::files::is_image_file(&path) {
            out.push(path);
        } else {
            ignored.add(&path);
        }
    }
    Ok(out)
}

fn require_dir(path: &Path) -> Result<(), DatasetError> {
    if !path.exists() {
        Err(DatasetError::MissingFolder(path.to_path_buf()))
    } else if !path.is_dir() {
        Err(DatasetError::NotAFolder(path.to_path_buf()))
    } else {
        Ok(())
    }
}

/// Candidate files per class of a folder of class folders.
fn collect(
    dir: &Path,
    classes: &[String],
    strict_classes: bool,
    ignored: &mut Ignored,
) -> Result<Vec<(usize, PathBuf)>, DatasetError> {
    let mut out = Vec::new();
    for (name, path) in class_dirs(dir)? {
        let label = match classes.iter().position(|c| *c == name) {
            Some(l) => l,
            None if strict_classes => {
                return Err(DatasetError::UnknownValClass {
                    class: name,
                    dir: dir.to_path_buf(),
                    known: classes.to_vec(),
                });
            }
            None => continue,
        };
        out.extend(files_below(&path, ignored)?.into_iter().map(|p| (label, p)));
    }
    Ok(out)
}

/// What [`verify`] found: the readable samples, the skipped files, and what was noticed of
/// the readable ones.
#[derive(Default)]
struct Verified {
    ok: Vec<Sample>,
    skipped: Vec<Skipped>,
    incomplete: Vec<PathBuf>,
    transparent: usize,
    blank_without_alpha: Vec<PathBuf>,
}

impl Verified {
    fn extend(&mut self, other: Verified) {
        self.ok.extend(other.ok);
        self.skipped.extend(other.skipped);
        self.incomplete.extend(other.incomplete);
        self.transparent += other.transparent;
        self.blank_without_alpha.extend(other.blank_without_alpha);
    }
}

/// Decodes every candidate in parallel. Each check runs under the panic guard: a panic in it
/// skips that file, by name.
fn verify(candidates: Vec<(usize, PathBuf)>, opts: &ScanOptions) -> Verified {
    let checked: Vec<_> = candidates
        .into_par_iter()
        .map(|(label, path)| {
            let result =
                infer::guard::isolate("the image check", || (opts.check)(&path)).unwrap_or_else(|p| Err(p.to_string()));
            (result, label, path)
        })
        .collect();
    let mut v = Verified::default();
    for (result, label, path) in checked {
        match result {
            Ok(notes) => {
                if notes.incomplete {
                    v.incomplete.push(path.clone());
                }
                v.transparent += usize::from(notes.transparent);
                if notes.blank_without_alpha {
                    v.blank_without_alpha.push(path.clone());
                }
                v.ok.push(Sample { path, label });
            }
            Err(reason) => v.skipped.push(Skipped { path, reason }),
        }
    }
    v
}

/// Stratified split: per class, a seeded shuffle sends `round(n × fraction)` images (at least
/// one, and never the last one) to validation. Deterministic for a given seed and file list.
pub fn stratified_split(samples: Vec<Sample>, classes: usize, fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let mut per_class: Vec<Vec<Sample>> = vec![Vec::new(); classes];
    for s in samples {
        per_class[s.label].push(s);
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (label, mut items) in per_class.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (label as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        items.shuffle(&mut rng);
        let n = items.len();
        let n_val = if n < 2 { 0 } else { ((n as f64 * fraction).round() as usize).clamp(1, n - 1) };
        let rest = items.split_off(n_val);
        val.extend(items);
        train.extend(rest);
    }
    train.sort_by(|a, b| (a.label, &a.path).cmp(&(b.label, &b.path)));
    val.sort_by(|a, b| (a.label, &a.path).cmp(&(b.label, &b.path)));
    (train, val)
}

/// Names of the subfolders of `dir`.
fn subfolder_names(dir: &Path) -> Result<Vec<String>, DatasetError> {
    Ok(class_dirs(dir)?.into_iter().map(|(n, _)| n).collect())
}

/// Reads the layout of `root` (see the module documentation).
pub fn layout(root: &Path, val_dir: Option<&str>) -> Result<Layout, DatasetError> {
    require_dir(root)?;
    let names = subfolder_names(root)?;
    if let Some(v) = val_dir {
        if !names.iter().any(|n| n == v) {
            return Err(DatasetError::MissingValDir { root: root.to_path_buf(), name: v.to_string() });
        }
    }
    let is_validation = |n: &str| VALIDATION_DIRS.contains(&n) || val_dir == Some(n);
    let train = root.join("train");
    let train_has_classes = names.iter().any(|n| n == "train") && !subfolder_names(&train)?.is_empty();
    let beside: Vec<&String> = names.iter().filter(|n| *n != "train").collect();
    if train_has_classes && beside.iter().all(|n| is_validation(n)) {
        let chosen = val_dir
            .map(str::to_string)
            .or_else(|| VALIDATION_DIRS.iter().find(|v| names.iter().any(|n| n == *v)).map(|v| v.to_string()));
        let unused = beside.iter().filter(|n| Some(n.as_str()) != chosen.as_deref()).map(|n| root.join(n)).collect();
        return Ok(Layout { class_root: train, val_dir: chosen.map(|v| root.join(v)), unused, note: None });
    }
    let note = train_has_classes.then(|| {
        format!(
            "{} holds folders, but {} sit beside it: every folder of {} is taken as a class; for a train/validation layout keep only train/ and val/ (or valid/, test/) there",
            train.display(),
            beside.iter().map(|n| format!("{n}/")).collect::<Vec<_>>().join(", "),
            root.display()
        )
    });
    // ROOT/<class>/... with a validation folder of the same classes beside them.
    let classes: Vec<&String> = names.iter().filter(|n| !is_validation(n)).collect();
    let mut candidates = Vec::new();
    for n in names.iter().filter(|n| is_validation(n)) {
        let inner = subfolder_names(&root.join(n))?;
        let same_classes = !inner.is_empty() && inner.iter().all(|c| classes.contains(&c));
        if same_classes || val_dir == Some(n.as_str()) {
            candidates.push(n.clone());
        }
    }
    let order = |n: &String| {
        if val_dir == Some(n.as_str()) {
            0
        } else {
            1 + VALIDATION_DIRS.iter().position(|v| v == n).unwrap_or(VALIDATION_DIRS.len())
        }
    };
    candidates.sort_by_key(order);
    let chosen = candidates.first().map(|n| root.join(n));
    let unused = candidates.iter().skip(1).map(|n| root.join(n)).collect();
    Ok(Layout { class_root: root.to_path_buf(), val_dir: chosen, unused, note })
}

/// Scans `root` into a dataset. See the module documentation for the layouts.
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Dataset, DatasetError> {
    if !(opts.val_fraction > 0.0 && opts.val_fraction < 1.0) {
        return Err(DatasetError::BadFraction(opts.val_fraction));
    }
    let layout = layout(root, opts.val_dir)?;
    let class_root = &layout.class_root;
    // Validation folders sitting among the classes are not classes.
    let not_classes: Vec<&PathBuf> = layout.val_dir.iter().chain(&layout.unused).collect();
    let classes: Vec<String> =
        class_dirs(class_root)?.into_iter().filter(|(_, p)| !not_classes.contains(&p)).map(|(n, _)| n).collect();
    if classes.len() < 2 {
        return Err(DatasetError::TooFewClasses { root: class_root.clone(), found: classes });
    }
    let mut ignored = Ignored::default();
    let train_candidates: Vec<(usize, PathBuf)> = collect(class_root, &classes, false, &mut ignored)?;
    let val_candidates = match &layout.val_dir {
        Some(dir) => Some(collect(dir, &classes, true, &mut ignored)?),
        None => None,
    };

    let mut found = verify(train_candidates, opts);
    let train_ok = std::mem::take(&mut found.ok);
    let counts = Dataset::counts(&train_ok, classes.len());
    if let Some(i) = counts.iter().position(|&c| c == 0) {
        return Err(DatasetError::EmptyClass { class: classes[i].clone(), dir: class_root.join(&classes[i]) });
    }
    let (train, val, split) = match val_candidates {
        Some(candidates) => {
            let mut val = verify(candidates, opts);
            let val_ok = std::mem::take(&mut val.ok);
            found.extend(val);
            (train_ok, val_ok, SplitKind::Folder)
        }
        None => {
            let (t, v) = stratified_split(train_ok, classes.len(), opts.val_fraction, opts.seed);
            (t, v, SplitKind::Random { fraction: opts.val_fraction, seed: opts.seed })
        }
    };
    if val.is_empty() {
        return Err(DatasetError::EmptyValidation);
    }
    found.incomplete.sort();
    found.blank_without_alpha.sort();
    Ok(Dataset {
        root: root.to_path_buf(),
        classes,
        train,
        val,
        split,
        layout,
        skipped: found.skipped,
        ignored,
        incomplete: found.incomplete,
        transparent: found.transparent,
        blank_without_alpha: found.blank_without_alpha,
    })
}

/// The validation images of a data folder as [`scan`] would choose them (its validation
/// folder), for checking an export; all images of `root` when it has no such folder.
pub fn validation_images(root: &Path) -> Vec<PathBuf> {
    let dir = layout(root, None).ok().and_then(|l| l.val_dir).unwrap_or_else(|| root.to_path_buf());
    infer::files::collect(&[dir]).files()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_unless_bad(p: &Path) -> Result<FileNotes, String> {
        let name = p.to_string_lossy();
        assert!(!name.contains("boom"), "decoder bug");
        if name.contains("bad") {
            Err("corrupt".into())
        } else {
            Ok(FileNotes { incomplete: name.contains("cut"), ..Default::default() })
        }
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn opts() -> ScanOptions<'static> {
        ScanOptions { val_fraction: 0.2, seed: 7, val_dir: None, check: &ok_unless_bad }
    }

    #[test]
    fn train_val_folders() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "train/b/1.jpg",
            "train/b/2.PNG",
            "train/a/x/3.jpeg",
            "train/a/bad.jpg",
            "train/b/boom.png",
            "train/a/notes.txt",
            "val/a/4.jpg",
            "val/b/5.jpg",
        ] {
            touch(d.path(), f);
        }
        let ds = scan(d.path(), &opts()).unwrap();
        assert_eq!(ds.classes, ["a", "b"]);
        assert_eq!(ds.train.len(), 3);
        assert_eq!(ds.train[0].label, 0);
        assert!(ds.train[0].path.ends_with("train/a/x/3.jpeg"));
        assert_eq!(ds.val.len(), 2);
        // A check that panics skips its file like any unreadable one.
        assert_eq!(ds.skipped.len(), 2);
        assert_eq!(ds.skipped[0].reason, "corrupt");
        assert!(ds.skipped[1].path.ends_with("boom.png"));
        assert_eq!(ds.skipped[1].reason, "internal error in the image check: decoder bug");
        assert_eq!(ds.ignored.total(), 1);
        assert_eq!(ds.split, SplitKind::Folder);
    }

    #[test]
    fn split_without_val_is_stratified_and_deterministic() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..10 {
            touch(d.path(), &format!("cats/{i}.jpg"));
            touch(d.path(), &format!("dogs/{i}.jpg"));
        }
        touch(d.path(), "owls/0.jpg");
        let a = scan(d.path(), &opts()).unwrap();
        let b = scan(d.path(), &opts()).unwrap();
        assert_eq!(a.val, b.val);
        assert_eq!(Dataset::counts(&a.val, 3), [2, 2, 0]);
        assert_eq!(Dataset::counts(&a.train, 3), [8, 8, 1]);
        let c = scan(d.path(), &ScanOptions { seed: 8, ..opts() }).unwrap();
        assert_ne!(a.val, c.val);
        // train/ without val/ splits train/
        let e = tempfile::tempdir().unwrap();
        for i in 0..5 {
            touch(e.path(), &format!("train/x/{i}.jpg"));
            touch(e.path(), &format!("train/y/{i}.jpg"));
        }
        let ds = scan(e.path(), &opts()).unwrap();
        assert_eq!(ds.val.len(), 2);
        assert!(matches!(ds.split, SplitKind::Random { .. }));
    }

    #[test]
    fn errors() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        assert!(matches!(scan(&missing, &opts()), Err(DatasetError::MissingFolder(_))));
        touch(d.path(), "only/1.jpg");
        assert!(matches!(scan(d.path(), &opts()), Err(DatasetError::TooFewClasses { .. })));
        touch(d.path(), "empty/bad.jpg");
        let err = scan(d.path(), &opts()).unwrap_err();
        assert!(matches!(err, DatasetError::EmptyClass { ref class, .. } if class == "empty"), "{err}");
        assert!(err.to_string().contains("no readable image"));
        assert!(matches!(
            scan(d.path(), &ScanOptions { val_fraction: 1.5, ..opts() }),
            Err(DatasetError::BadFraction(_))
        ));
        let v = tempfile::tempdir().unwrap();
        for f in ["train/a/1.jpg", "train/b/1.jpg", "val/c/1.jpg"] {
            touch(v.path(), f);
        }
        assert!(matches!(scan(v.path(), &opts()), Err(DatasetError::UnknownValClass { .. })));
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            touch(d.path(), f);
        }
        d
    }

    fn names(paths: &[PathBuf], root: &Path) -> Vec<String> {
        paths.iter().map(|p| p.strip_prefix(root).unwrap().display().to_string()).collect()
    }

    #[test]
    fn validation_folder_is_val_then_valid_then_test_or_the_one_named() {
        // Roboflow's export: train/ + valid/ (+ test/, reported unused).
        let d =
            tree(&["train/a/1.jpg", "train/b/1.jpg", "valid/a/2.jpg", "valid/b/2.jpg", "test/a/3.jpg", "test/b/3.jpg"]);
        let ds = scan(d.path(), &opts()).unwrap();
        assert_eq!(ds.split, SplitKind::Folder);
        assert!(ds.layout.val_dir.as_ref().unwrap().ends_with("valid"));
        assert_eq!(names(&ds.layout.unused, d.path()), ["test"]);
        assert_eq!(ds.val.len(), 2);
        // Kaggle's train/ + test/.
        let k = tree(&["train/a/1.jpg", "train/b/1.jpg", "test/a/2.jpg", "test/b/2.jpg"]);
        let ds = scan(k.path(), &opts()).unwrap();
        assert!(ds.layout.val_dir.as_ref().unwrap().ends_with("test") && ds.layout.unused.is_empty());
        // --val-dir chooses; a missing one is an error.
        let ds = scan(d.path(), &ScanOptions { val_dir: Some("test"), ..opts() }).unwrap();
        assert!(ds.layout.val_dir.as_ref().unwrap().ends_with("test"));
        assert_eq!(names(&ds.layout.unused, d.path()), ["valid"]);
        let err = scan(d.path(), &ScanOptions { val_dir: Some("holdout"), ..opts() }).unwrap_err();
        assert!(err.to_string().contains("no folder 'holdout' for --val-dir"), "{err}");
        // Class folders at the root, with val/ of the same classes beside them.
        let r = tree(&["cats/1.jpg", "dogs/1.jpg", "val/cats/2.jpg", "val/dogs/2.jpg"]);
        let ds = scan(r.path(), &opts()).unwrap();
        assert_eq!(ds.classes, ["cats", "dogs"]);
        assert!(ds.layout.val_dir.as_ref().unwrap().ends_with("val"));
        assert_eq!(ds.val.len(), 2);
    }

    #[test]
    fn a_class_named_train_is_a_class() {
        // ROOT/{bus,car,train}/*.png: no class folders inside train/, so it is a class.
        let d = tree(&["bus/1.png", "car/1.png", "train/1.png", "bus/2.png", "car/2.png", "train/2.png"]);
        let ds = scan(d.path(), &opts()).unwrap();
        assert_eq!(ds.classes, ["bus", "car", "train"]);
        assert!(ds.layout.note.is_none());
        assert!(matches!(ds.split, SplitKind::Random { .. }));
        // train/ with subfolders beside other classes: ambiguous; taken as classes, said once.
        let a = tree(&["bus/1.png", "bus/2.png", "train/steam/1.png", "train/steam/2.png", "car/1.png", "car/2.png"]);
        let ds = scan(a.path(), &opts()).unwrap();
        assert_eq!(ds.classes, ["bus", "car", "train"]);
        let note = ds.layout.note.unwrap();
        assert!(note.contains("taken as a class") && note.contains("bus/, car/"), "{note}");
    }

    #[test]
    fn too_few_classes_reads_naturally() {
        let d = tree(&["only/1.jpg"]);
        let err = scan(d.path(), &opts()).unwrap_err().to_string();
        assert!(err.contains("found one class folder (only)"), "{err}");
        let e = tree(&["loose.jpg"]);
        let err = scan(e.path(), &opts()).unwrap_err().to_string();
        assert!(err.contains("found no class folder;"), "{err}");
    }

    #[test]
    fn fingerprint_tells_data_apart() {
        let d = tree(&["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg"]);
        let one = scan(d.path(), &opts()).unwrap().fingerprint();
        assert_eq!(one, scan(d.path(), &opts()).unwrap().fingerprint());
        assert_eq!(one.files, 4);
        std::fs::write(d.path().join("b/2.jpg"), b"longer content").unwrap();
        assert_ne!(one, scan(d.path(), &opts()).unwrap().fingerprint());
    }
}
