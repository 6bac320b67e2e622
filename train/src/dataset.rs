//! Scanning an image folder: `ROOT/{train,val}/<class>/<images>` (or `ROOT/<class>/<images>`
//! with a seeded, stratified split), class names sorted as torchvision's `ImageFolder` sorts them.
//! Every candidate file is decoded once, in parallel, so unreadable files are reported up front
//! and never reach a batch.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::DatasetError;

/// Extensions considered images (case-insensitive): torchvision's list plus GIF, which the
/// decoder reads as well.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp", "gif"];

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
    /// Image-named files that could not be decoded.
    pub skipped: Vec<Skipped>,
    /// Files ignored for not having an image extension.
    pub ignored: usize,
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
}

/// Options of [`scan`].
pub struct ScanOptions<'a> {
    /// Fraction of each class drawn for validation when there is no `val/` folder.
    pub val_fraction: f64,
    pub seed: u64,
    /// Checks that a file is a readable image; returns the reason when it is not.
    pub check: &'a (dyn Fn(&Path) -> Result<(), String> + Sync),
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
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
fn files_below(dir: &Path, ignored: &mut usize) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    for path in read_dir_sorted(dir)? {
        if path.is_dir() {
            out.extend(files_below(&path, ignored)?);
        } else if is_image_name(&path) {
            out.push(path);
        } else {
            *ignored += 1;
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
    ignored: &mut usize,
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

/// Decodes every candidate in parallel; returns the readable samples and the skipped files.
/// Each check runs under the panic guard: a panic in it skips that file, by name.
fn verify(candidates: Vec<(usize, PathBuf)>, opts: &ScanOptions) -> (Vec<Sample>, Vec<Skipped>) {
    let checked: Vec<_> = candidates
        .into_par_iter()
        .map(|(label, path)| {
            let result =
                infer::guard::isolate("the image check", || (opts.check)(&path)).unwrap_or_else(|p| Err(p.to_string()));
            (result, label, path)
        })
        .collect();
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for (result, label, path) in checked {
        match result {
            Ok(()) => ok.push(Sample { path, label }),
            Err(reason) => skipped.push(Skipped { path, reason }),
        }
    }
    (ok, skipped)
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

/// Scans `root` into a dataset. See the module documentation for the layouts.
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Dataset, DatasetError> {
    if !(opts.val_fraction > 0.0 && opts.val_fraction < 1.0) {
        return Err(DatasetError::BadFraction(opts.val_fraction));
    }
    require_dir(root)?;
    let train_dir = root.join("train");
    let val_dir = root.join("val");
    let has_train = train_dir.is_dir();
    let class_root = if has_train { train_dir.clone() } else { root.to_path_buf() };

    let classes: Vec<String> = class_dirs(&class_root)?.into_iter().map(|(n, _)| n).collect();
    if classes.len() < 2 {
        return Err(DatasetError::TooFewClasses { root: class_root, found: classes });
    }
    let mut ignored = 0;
    let train_candidates = collect(&class_root, &classes, true, &mut ignored)?;
    let val_candidates =
        if has_train && val_dir.is_dir() { Some(collect(&val_dir, &classes, true, &mut ignored)?) } else { None };

    let (train_ok, mut skipped) = verify(train_candidates, opts);
    let counts = Dataset::counts(&train_ok, classes.len());
    if let Some(i) = counts.iter().position(|&c| c == 0) {
        return Err(DatasetError::EmptyClass { class: classes[i].clone(), dir: class_root.join(&classes[i]) });
    }
    let (train, val, split) = match val_candidates {
        Some(candidates) => {
            let (val_ok, val_skipped) = verify(candidates, opts);
            skipped.extend(val_skipped);
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
    Ok(Dataset { root: root.to_path_buf(), classes, train, val, split, skipped, ignored })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_unless_bad(p: &Path) -> Result<(), String> {
        let name = p.to_string_lossy();
        assert!(!name.contains("boom"), "decoder bug");
        if name.contains("bad") {
            Err("corrupt".into())
        } else {
            Ok(())
        }
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn opts() -> ScanOptions<'static> {
        ScanOptions { val_fraction: 0.2, seed: 7, check: &ok_unless_bad }
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
        assert_eq!(ds.ignored, 1);
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
}
