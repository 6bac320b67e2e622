//! Turning command-line paths into the list of image files to classify.
//!
//! Folders are walked recursively in sorted order; a file found there is taken when its
//! extension names an image format or its bytes carry an image signature (TGA, which has none
//! at its start, by the TGA 2.0 footer at its end). Files named
//! explicitly are always taken (a non-image then gets an error record). Unreadable folders and
//! broken links become error records too; nothing aborts the walk.

use std::path::{Path, PathBuf};

use crate::error::ItemError;
use crate::prediction::FileResult;

/// Extensions taken as images when walking folders (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "gif", "bmp", "dib", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pnm", "tga",
    "icb", "vda", "vst", "ico", "qoi",
];

/// One entry of the expanded input, in order.
#[derive(Debug)]
pub enum Input {
    /// A file to classify.
    File(PathBuf),
    /// A path that could not be used, with the reason.
    Error(FileResult),
}

impl Input {
    /// The path this entry is about.
    pub fn path(&self) -> &Path {
        match self {
            Input::File(p) => p,
            Input::Error(r) => &r.path,
        }
    }
}

/// What a set of command-line paths expands to.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Files and unusable paths, in command-line then sorted-walk order.
    pub items: Vec<Input>,
    /// Files passed over in folders for being neither image-named nor image-like.
    pub ignored: Ignored,
}

/// Files passed over while walking folders, counted by extension, with the first few names of
/// each kind: what a user needs to see that nothing they meant to use was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ignored {
    /// By lower-case extension with its dot (`.svg`), or `(no extension)`.
    pub by_extension: std::collections::BTreeMap<String, IgnoredKind>,
}

/// One kind of passed-over file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IgnoredKind {
    pub count: usize,
    /// The first [`Ignored::EXAMPLES`] of them, in walking order.
    pub examples: Vec<PathBuf>,
}

impl Ignored {
    /// Names kept per kind.
    pub const EXAMPLES: usize = 3;

    pub fn add(&mut self, path: &Path) {
        let ext = path
            .extension()
            .map_or_else(|| "(no extension)".to_string(), |e| format!(".{}", e.to_string_lossy().to_lowercase()));
        let kind = self.by_extension.entry(ext).or_default();
        kind.count += 1;
        if kind.examples.len() < Self::EXAMPLES {
            kind.examples.push(path.to_path_buf());
        }
    }

    pub fn merge(&mut self, other: Ignored) {
        for (ext, k) in other.by_extension {
            let kind = self.by_extension.entry(ext).or_default();
            kind.count += k.count;
            let room = Self::EXAMPLES.saturating_sub(kind.examples.len());
            kind.examples.extend(k.examples.into_iter().take(room));
        }
    }

    pub fn total(&self) -> usize {
        self.by_extension.values().map(|k| k.count).sum()
    }

    /// The kinds, most frequent first, e.g. `173 .svg (vector images are not read), 6799 .ogg`.
    pub fn describe(&self) -> String {
        let mut kinds: Vec<(&String, &IgnoredKind)> = self.by_extension.iter().collect();
        kinds.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let parts: Vec<String> = kinds
            .iter()
            .map(|(ext, k)| match why_not_read(ext) {
                Some(why) => format!("{} {ext} ({why})", k.count),
                None => format!("{} {ext}", k.count),
            })
            .collect();
        parts.join(", ")
    }
}

/// Why files that look like pictures are not read, for the kinds users ask about.
fn why_not_read(ext: &str) -> Option<&'static str> {
    Some(match ext {
        ".svg" | ".svgz" | ".eps" | ".ai" | ".pdf" => "vector images are not read",
        ".heic" | ".heif" | ".avif" | ".jxl" | ".jp2" | ".j2k" => "no decoder for this format here",
        ".cr2" | ".cr3" | ".nef" | ".arw" | ".dng" | ".orf" | ".rw2" | ".raf" => "camera raw files are not read",
        ".psd" | ".xcf" | ".kra" => "layered editor files are not read",
        _ => return None,
    })
}

/// The files among `items`, in order.
pub fn file_paths(items: &[Input]) -> Vec<PathBuf> {
    items.iter().filter_map(|i| if let Input::File(p) = i { Some(p.clone()) } else { None }).collect()
}

impl Inputs {
    /// The files to classify, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        file_paths(&self.items)
    }

    /// Splits into the files and the error records.
    pub fn into_parts(self) -> (Vec<PathBuf>, Vec<FileResult>) {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for i in self.items {
            match i {
                Input::File(p) => files.push(p),
                Input::Error(e) => errors.push(e),
            }
        }
        (files, errors)
    }
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The TGA 2.0 footer: the last 18 bytes of a file that has one.
const TGA_FOOTER: &[u8] = b"TRUEVISION-XFILE.\0";

fn looks_like_image(path: &Path) -> bool {
    let signature = |head: &[u8]| image::guess_format(head).is_ok() || crate::decode::is_tiff(head);
    crate::decode::sniff(path, 32).is_ok_and(|head| signature(&head)) || has_tga_footer(path)
}

fn has_tga_footer(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut tail = [0u8; 18];
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::End(-(tail.len() as i64)))?;
            f.read_exact(&mut tail)
        })
        .is_ok_and(|()| tail == TGA_FOOTER)
}

/// Whether a file found in a folder is taken as an image: its extension names an image format
/// or its first bytes are an image signature. The one rule for `infer` and `train` alike.
pub fn is_image_file(path: &Path) -> bool {
    has_image_extension(path) || looks_like_image(path)
}

fn error(path: &Path, reason: impl Into<String>) -> Input {
    Input::Error(FileResult { path: path.to_path_buf(), result: Err(ItemError::Path(reason.into())) })
}

fn walk(dir: &Path, out: &mut Inputs) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return out.items.push(error(dir, format!("cannot read folder: {e}"))),
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) => paths.push(e.path()),
            Err(e) => out.items.push(error(dir, format!("cannot list folder: {e}"))),
        }
    }
    paths.sort();
    for path in paths {
        match std::fs::metadata(&path) {
            Err(_) if path.symlink_metadata().is_ok() => out.items.push(error(&path, "broken symbolic link")),
            Err(e) => out.items.push(error(&path, format!("cannot read: {e}"))),
            Ok(m) if m.is_dir() => walk(&path, out),
            Ok(_) if is_image_file(&path) => out.items.push(Input::File(path)),
            Ok(_) => out.ignored.add(&path),
        }
    }
}

/// Expands files and folders into image files.
pub fn collect(paths: &[PathBuf]) -> Inputs {
    let mut out = Inputs::default();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => walk(path, &mut out),
            Ok(_) => out.items.push(Input::File(path.clone())),
            Err(_) if path.symlink_metadata().is_ok() => out.items.push(error(path, "broken symbolic link")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.items.push(error(path, "no such file or folder")),
            Err(e) => out.items.push(error(path, format!("cannot read: {e}"))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_over_files_are_counted_by_kind_most_frequent_first() {
        let mut ignored = Ignored::default();
        for name in ["a.ogg", "b.OGG", "c.svg", "d.ogg", "e.ogg", "README"] {
            ignored.add(Path::new(name));
        }
        assert_eq!(ignored.total(), 6);
        assert_eq!(ignored.describe(), "4 .ogg, 1 (no extension), 1 .svg (vector images are not read)");
        assert_eq!(ignored.by_extension[".ogg"].examples, [Path::new("a.ogg"), Path::new("b.OGG"), Path::new("d.ogg")]);
        let mut more = Ignored::default();
        more.add(Path::new("f.svg"));
        ignored.merge(more);
        assert_eq!(ignored.by_extension[".svg"].count, 2);
    }

    #[test]
    fn walks_sorted_and_reports_problems() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::write(root.join("b/c/z.JPG"), b"x").unwrap();
        std::fs::write(root.join("a.png"), b"x").unwrap();
        std::fs::write(root.join("notes.txt"), b"hello").unwrap();
        // An image without an extension, by its signature; a TGA by its footer; BigTIFF.
        std::fs::write(root.join("noext"), b"\x89PNG\r\n\x1a\n0000000000000000").unwrap();
        std::fs::write(root.join("targa"), [&[0u8; 40][..], b"TRUEVISION-XFILE.\0"].concat()).unwrap();
        std::fs::write(root.join("big"), b"II+\0\x08\0\0\0").unwrap();
        std::fs::write(root.join("c.tga"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("gone.jpg"), root.join("dangling.jpg")).unwrap();
        let inputs = collect(&[root.to_path_buf(), root.join("missing.jpg"), root.join("notes.txt")]);
        assert_eq!(inputs.ignored.total(), 1);
        assert_eq!(inputs.ignored.describe(), "1 .txt");
        let order: Vec<String> = inputs
            .items
            .iter()
            .map(|i| match i {
                Input::File(p) | Input::Error(FileResult { path: p, .. }) => {
                    p.strip_prefix(root).unwrap().display().to_string()
                }
            })
            .collect();
        assert_eq!(
            order,
            ["a.png", "b/c/z.JPG", "big", "c.tga", "dangling.jpg", "noext", "targa", "missing.jpg", "notes.txt"]
        );
        let (files, errors) = inputs.into_parts();
        assert_eq!(files.len(), 7);
        let errors: Vec<String> = errors.iter().map(|e| e.error_line().unwrap()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].ends_with("dangling.jpg: broken symbolic link"));
        assert!(errors[1].ends_with("missing.jpg: no such file or folder"));
    }
}
