//! Result records as `infer` writes them (an aligned table, JSON lines, CSV) and, for
//! `--resume`, as it reads them back: one module owns both directions so the two cannot drift.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::prediction::FileResult;

/// How records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Format {
    /// Aligned columns: label, confidence, path.
    Table,
    /// One JSON object per line.
    Jsonl,
    Csv,
}

/// The first line of a CSV results file (`incomplete` is `true` for an image decoded from a
/// file cut short, else empty).
pub const CSV_HEADER: &str = "path,label,class_index,confidence,top_k,error,incomplete";

/// Writes records in one format.
pub struct RecordWriter<W: Write> {
    pub format: Format,
    pub out: W,
    /// Width of the label column of the table.
    pub label_width: usize,
}

/// A CSV field, quoted when it holds a separator, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r', ';']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl<W: Write> RecordWriter<W> {
    /// The CSV header line (nothing for the other formats).
    pub fn header(&mut self) -> std::io::Result<()> {
        match self.format {
            Format::Csv => writeln!(self.out, "{CSV_HEADER}"),
            _ => Ok(()),
        }
    }

    pub fn write(&mut self, r: &FileResult) -> std::io::Result<()> {
        let path = r.path.to_string_lossy();
        match (self.format, &r.result) {
            (Format::Jsonl, _) => {
                serde_json::to_writer(&mut self.out, r)?;
                writeln!(self.out)
            }
            (Format::Csv, Ok(p)) => {
                // top_k as a JSON array in one field: unambiguous whatever the class names hold.
                let top = serde_json::to_string(&p.top_k).map_err(std::io::Error::other)?;
                let (path, label, top) = (csv_field(&path), csv_field(&p.label), csv_field(&top));
                let incomplete = if p.incomplete { "true" } else { "" };
                writeln!(self.out, "{path},{label},{},{:.6},{top},,{incomplete}", p.class_index, p.confidence)
            }
            (Format::Csv, Err(e)) => writeln!(self.out, "{},,,,,{},", csv_field(&path), csv_field(&e.to_string())),
            (Format::Table, Ok(p)) => {
                let w = self.label_width;
                let mut line = format!("{:<w$}  {:>6.2}%  {path}", p.label, 100.0 * p.confidence);
                if p.top_k.len() > 1 {
                    let top: Vec<String> =
                        p.top_k.iter().map(|s| format!("{} {:.2}%", s.label, 100.0 * s.probability)).collect();
                    line.push_str(&format!("  [{}]", top.join(", ")));
                }
                if p.incomplete {
                    line.push_str("  (incomplete file)");
                }
                writeln!(self.out, "{line}")
            }
            (Format::Table, Err(e)) => {
                writeln!(self.out, "{:<w$}  {:>7}  {path}: {e}", "ERROR", "", w = self.label_width)
            }
        }
    }
}

/// Why an existing results file cannot be continued.
#[derive(Debug, Error)]
pub enum ResumeError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: --resume needs --format jsonl or csv (a table cannot be read back)")]
    Table { path: PathBuf },
    #[error("{path}: line {line} is not a {format} result record; not resuming (move the file aside)")]
    NotARecord { path: PathBuf, line: usize, format: &'static str },
}

/// An existing results file, ready to be appended to.
#[derive(Debug)]
pub struct Resumed {
    /// The file, positioned at its end, torn last record removed.
    pub file: File,
    /// The paths it holds a record for (results and errors alike), as written.
    pub done: HashSet<String>,
    /// Whether it was empty (a CSV header is still to be written).
    pub empty: bool,
    /// Bytes of an incomplete last record that were cut off.
    pub torn_bytes: u64,
}

/// Opens (or creates) `path` to append records in `format`: reads the complete records it
/// holds, cuts off a torn last one (a run killed mid-write), and positions at the end.
pub fn resume(path: &Path, format: Format) -> Result<Resumed, ResumeError> {
    let io = |source| ResumeError::Io { path: path.to_path_buf(), source };
    if format == Format::Table {
        return Err(ResumeError::Table { path: path.to_path_buf() });
    }
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(io)?;
    let records = split_records(&text, format == Format::Csv);
    let complete: usize = records.iter().map(|r| r.len()).sum();
    let torn_bytes = (text.len() - complete) as u64;
    let mut done = HashSet::new();
    for (i, record) in records.iter().enumerate() {
        let line = String::from_utf8_lossy(record);
        let line = line.trim_end_matches(['\n', '\r']);
        let key = match format {
            Format::Csv if i == 0 => (line == CSV_HEADER).then(String::new),
            Format::Csv => csv_first_field(line),
            _ => serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("path").and_then(|p| p.as_str()).map(str::to_string)),
        };
        let name = if format == Format::Csv { "CSV" } else { "JSON lines" };
        let key = key.ok_or(ResumeError::NotARecord { path: path.to_path_buf(), line: i + 1, format: name })?;
        if !(format == Format::Csv && i == 0) {
            done.insert(key);
        }
    }
    if torn_bytes > 0 {
        file.set_len(complete as u64).map_err(io)?;
    }
    file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
    Ok(Resumed { file, done, empty: complete == 0, torn_bytes })
}

/// The complete records of `text` (each with its line break); a last one without its line
/// break is left out. In CSV a line break inside quotes belongs to the field.
fn split_records(text: &[u8], csv: bool) -> Vec<&[u8]> {
    let mut records = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'"' if csv => quoted = !quoted,
            b'\n' if !quoted => {
                records.push(&text[start..=i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    records
}

/// The first field of a CSV record, unquoted; `None` when the quoting is broken.
fn csv_first_field(line: &str) -> Option<String> {
    let Some(rest) = line.strip_prefix('"') else {
        return line.split(',').next().map(str::to_string);
    };
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if chars.peek() == Some(&'"') => {
                out.push('"');
                chars.next();
            }
            '"' => return matches!(chars.next(), Some(',') | None).then_some(out),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ItemError;
    use crate::prediction::{Prediction, Scored};

    fn records() -> Vec<FileResult> {
        let ok = |path: &str| FileResult {
            path: path.into(),
            result: Ok(Prediction {
                class_index: 1,
                label: "be\"e,s".into(),
                confidence: 0.75,
                top_k: vec![Scored { class_index: 1, label: "be\"e,s".into(), probability: 0.75 }],
                incomplete: path.starts_with('z'),
            }),
        };
        vec![
            ok("a.jpg"),
            ok("with, comma \"and\" quote\nand newline.jpg"),
            FileResult { path: "bad.png".into(), result: Err(ItemError::Path("not an image".into())) },
            ok("z.jpg"),
        ]
    }

    /// Written, torn at every byte, and read back: the complete records are found, the torn
    /// one is cut off, and nothing else.
    #[test]
    fn reads_back_what_it_writes_torn_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        for format in [Format::Jsonl, Format::Csv] {
            let mut w = RecordWriter { format, out: Vec::new(), label_width: 5 };
            w.header().unwrap();
            let mut ends = vec![w.out.len()];
            for r in records() {
                w.write(&r).unwrap();
                ends.push(w.out.len());
            }
            let full = w.out;
            for cut in 0..=full.len() {
                let path = dir.path().join("r");
                std::fs::write(&path, &full[..cut]).unwrap();
                let resumed = resume(&path, format).unwrap();
                let kept = ends.iter().copied().filter(|&e| e <= cut).max().unwrap_or(0);
                let kept = if format == Format::Csv && cut < ends[0] { 0 } else { kept };
                assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, kept, "{format:?} cut {cut}");
                let n_records = ends.iter().skip(1).filter(|&&e| e <= cut).count();
                assert_eq!(resumed.done.len(), n_records, "{format:?} cut {cut}");
                assert_eq!(resumed.empty, kept == 0);
            }
            std::fs::write(dir.path().join("r"), &full).unwrap();
            let done = resume(&dir.path().join("r"), format).unwrap().done;
            for r in records() {
                assert!(done.contains(r.path.to_str().unwrap()), "{format:?} {:?}", r.path);
            }
        }
    }

    #[test]
    fn refuses_what_it_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        std::fs::write(&path, "{\"path\":\"a\"}\nnot json\n").unwrap();
        let e = resume(&path, Format::Jsonl).unwrap_err().to_string();
        assert!(e.contains("line 2 is not a JSON lines result record"), "{e}");
        std::fs::write(&path, "name,size\n").unwrap();
        assert!(resume(&path, Format::Csv).unwrap_err().to_string().contains("line 1"));
        assert!(resume(&path, Format::Table).is_err());
        // Left as it was.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "name,size\n");
    }
}
