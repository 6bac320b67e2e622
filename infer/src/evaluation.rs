//! `infer --eval`: accuracy, per-class precision and recall, and the confusion matrix of a
//! labelled folder (`ROOT/<class>/<images>`, class folders named as the model's classes).

use std::path::{Path, PathBuf};

#[cfg(feature = "draw")]
use image::{Rgb, RgbImage};

use crate::files;
use crate::prediction::FileResult;

/// Counts of (true class, predicted class).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub classes: Vec<String>,
    /// `matrix[true][predicted]`.
    pub matrix: Vec<Vec<usize>>,
}

impl Evaluation {
    pub fn new(classes: Vec<String>) -> Self {
        let n = classes.len();
        Evaluation { classes, matrix: vec![vec![0; n]; n] }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.matrix[truth][predicted] += 1;
    }

    pub fn total(&self) -> usize {
        self.matrix.iter().flatten().sum()
    }

    pub fn correct(&self) -> usize {
        (0..self.classes.len()).map(|i| self.matrix[i][i]).sum()
    }

    pub fn accuracy(&self) -> f64 {
        ratio(self.correct(), self.total())
    }

    /// Of the images predicted as `c`, the fraction that are `c`.
    pub fn precision(&self, c: usize) -> f64 {
        ratio(self.matrix[c][c], self.matrix.iter().map(|row| row[c]).sum())
    }

    /// Of the images of class `c`, the fraction predicted as `c`.
    pub fn recall(&self, c: usize) -> f64 {
        ratio(self.matrix[c][c], self.matrix[c].iter().sum())
    }

    /// A plain-text report: accuracy, a per-class table, and the confusion matrix.
    pub fn report(&self) -> String {
        let w = self.classes.iter().map(|c| c.chars().count()).max().unwrap_or(5).max(9);
        let mut s = format!("accuracy {:.4} ({} of {} images)\n\n", self.accuracy(), self.correct(), self.total());
        s.push_str(&format!("{:<w$}  precision  recall  images\n", "class"));
        for (i, c) in self.classes.iter().enumerate() {
            s.push_str(&format!(
                "{c:<w$}  {:>9.4}  {:>6.4}  {:>6}\n",
                self.precision(i),
                self.recall(i),
                self.matrix[i].iter().sum::<usize>()
            ));
        }
        s.push_str(&format!("\nconfusion matrix (rows: true class, columns: predicted)\n{:<w$}", ""));
        let cw = self.classes.iter().map(|c| c.chars().count()).max().unwrap_or(1).max(6);
        for c in &self.classes {
            s.push_str(&format!("  {c:>cw$}"));
        }
        s.push('\n');
        for (i, c) in self.classes.iter().enumerate() {
            s.push_str(&format!("{c:<w$}"));
            for v in &self.matrix[i] {
                s.push_str(&format!("  {v:>cw$}"));
            }
            s.push('\n');
        }
        s
    }

    /// The confusion matrix as a heat map with counts and class names (names are shortened
    /// with an ellipsis beyond 160 pixels; column names are turned a quarter left).
    #[cfg(feature = "draw")]
    pub fn png(&self) -> RgbImage {
        use crate::canvas::{Canvas, BLACK, LINE, WHITE};
        let n = self.classes.len().max(1) as i64;
        let names: Vec<String> = self.classes.iter().map(|c| Canvas::fit(c, 160, 1)).collect();
        let label_w = names.iter().map(|c| Canvas::text_width(c, 1)).max().unwrap_or(30) + 16;
        let longest = names.iter().map(|c| Canvas::text_width(c, 1)).max().unwrap_or(30);
        let cell = (480 / n).clamp(24, 96);
        let (top, left) = (64 + longest, label_w + 30);
        let title = format!("confusion matrix - accuracy {:.4}", self.accuracy());
        let width = (left + n * cell + 20).max(Canvas::text_width(&title, 2) + 20);
        let mut cv = Canvas::new(width as u32, (top + n * cell + 40) as u32);
        cv.text(10, 10, &title, BLACK, 2);
        cv.text(left, 40, "predicted", BLACK, 1);
        let max = self.matrix.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
        for (i, row) in self.matrix.iter().enumerate() {
            cv.text(10, top + i as i64 * cell + cell / 2 - LINE / 2, &names[i], BLACK, 1);
            // Column labels, turned up and ending just above their column.
            let x = left + i as i64 * cell + cell / 2 - LINE / 2;
            cv.text_up(x, top - 6, &names[i], BLACK, 1);
            for (j, &v) in row.iter().enumerate() {
                let t = v as f64 / max;
                let shade = Rgb([(245.0 * (1.0 - 0.8 * t)) as u8, (245.0 * (1.0 - 0.55 * t)) as u8, 250]);
                let (x, y) = (left + j as i64 * cell, top + i as i64 * cell);
                cv.fill(x, y, cell - 1, cell - 1, shade);
                let txt = v.to_string();
                let colour = if t > 0.6 { WHITE } else { BLACK };
                cv.text(x + cell / 2 - Canvas::text_width(&txt, 1) / 2, y + cell / 2 - LINE / 2, &txt, colour, 1);
            }
        }
        cv.text(10, top + n * cell + 16, "rows: true class", BLACK, 1);
        cv.img
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The images of a labelled folder with their class index among `classes`.
pub struct Labelled {
    pub files: Vec<(PathBuf, usize)>,
    /// Unusable paths found while walking.
    pub errors: Vec<FileResult>,
    /// Files passed over for not being images.
    pub ignored: files::Ignored,
}

/// A labelled folder that cannot be evaluated (no class folders, or one the model lacks).
#[derive(Debug, thiserror::Error)]
#[error("{root}: {reason}")]
pub struct LabelledFolderError {
    pub root: PathBuf,
    pub reason: String,
}

/// Reads `root/<class>/...`; every class folder must be one of `classes`.
pub fn labelled_files(root: &Path, classes: &[String]) -> Result<Labelled, LabelledFolderError> {
    let bad = |reason: String| LabelledFolderError { root: root.to_path_buf(), reason };
    let entries = std::fs::read_dir(root).map_err(|e| bad(format!("cannot read folder: {e}")))?;
    let mut dirs: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(bad("no class folders (expected ROOT/<class>/<images>)".into()));
    }
    let mut out = Labelled { files: Vec::new(), errors: Vec::new(), ignored: files::Ignored::default() };
    for dir in dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(label) = classes.iter().position(|c| *c == name) else {
            return Err(bad(format!("folder '{name}' is not one of the model's classes ({})", classes.join(", "))));
        };
        let inputs = files::collect(&[dir]);
        out.ignored.merge(inputs.ignored.clone());
        let (found, errors) = inputs.into_parts();
        out.files.extend(found.into_iter().map(|f| (f, label)));
        out.errors.extend(errors);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics() {
        let mut e = Evaluation::new(vec!["a".into(), "b".into()]);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (1, 0), (1, 1), (1, 1)] {
            e.add(t, p);
        }
        assert_eq!(e.total(), 7);
        assert!((e.accuracy() - 5.0 / 7.0).abs() < 1e-12);
        assert!((e.precision(0) - 2.0 / 3.0).abs() < 1e-12);
        assert!((e.recall(1) - 0.75).abs() < 1e-12);
        let r = e.report();
        assert!(r.contains("accuracy 0.7143 (5 of 7 images)"), "{r}");
        #[cfg(feature = "draw")]
        assert!(e.png().width() > 100);
    }

    #[test]
    fn labelled_folder() {
        let d = tempfile::tempdir().unwrap();
        for f in ["ants/1.jpg", "bees/2.png", "bees/3.jpg"] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let classes = vec!["ants".to_string(), "bees".to_string()];
        let l = labelled_files(d.path(), &classes).unwrap();
        assert_eq!(l.files.iter().map(|f| f.1).collect::<Vec<_>>(), [0, 1, 1]);
        std::fs::create_dir(d.path().join("wasps")).unwrap();
        let err = labelled_files(d.path(), &classes).err().unwrap().to_string();
        assert!(err.contains("'wasps' is not one of the model's classes"), "{err}");
    }
}
