//! What classification returns: predictions ranked from model outputs, and per-file results
//! with their JSON form (the records of `infer --format jsonl` and the server).

use std::path::PathBuf;

use serde::{Serialize, Serializer};

use crate::error::ItemError;

/// A class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub class_index: usize,
    pub label: String,
    pub probability: f32,
}

/// The classification of one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub class_index: usize,
    pub label: String,
    /// Probability of the predicted class.
    pub confidence: f32,
    /// The most probable classes, best first.
    pub top_k: Vec<Scored>,
    /// The image came from a file that ends before its image data does (a JPEG cut short):
    /// what was missing was filled in, as libjpeg does. Written in records only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

/// The outcome for one input file.
#[derive(Debug)]
pub struct FileResult {
    pub path: PathBuf,
    pub result: Result<Prediction, ItemError>,
}

impl FileResult {
    /// Whether the record is about the path itself (missing, a broken link, an unreadable
    /// folder) rather than a file that was read.
    pub fn is_path_error(&self) -> bool {
        matches!(self.result, Err(ItemError::Path(_)))
    }

    /// `path: reason` for a failed input, as printed on one line.
    pub fn error_line(&self) -> Option<String> {
        self.result.as_ref().err().map(|e| format!("{}: {e}", self.path.display()))
    }
}

impl Serialize for FileResult {
    /// `{"path", "class_index", "label", "confidence", "top_k"}` or `{"path", "error"}`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("path", &self.path.to_string_lossy())?;
        match &self.result {
            Ok(p) => {
                m.serialize_entry("class_index", &p.class_index)?;
                m.serialize_entry("label", &p.label)?;
                m.serialize_entry("confidence", &p.confidence)?;
                m.serialize_entry("top_k", &p.top_k)?;
                if p.incomplete {
                    m.serialize_entry("incomplete", &true)?;
                }
            }
            Err(e) => m.serialize_entry("error", &e.to_string())?,
        }
        m.end()
    }
}

/// One row of model outputs, ranked: every class's probability and the prediction, from one
/// softmax.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// One per class, in class order.
    pub probabilities: Vec<f32>,
    pub prediction: Prediction,
}

/// Turns rows of model outputs into predictions.
#[derive(Debug, Clone)]
pub(crate) struct Ranker {
    pub classes: Vec<String>,
    pub top_k: usize,
    /// The rows are already probabilities (else logits, softmax applied here).
    pub probabilities: bool,
}

impl Ranker {
    /// Each row of `outputs` (`n × classes`) ranked, listing `top_k` classes.
    pub fn rank(&self, outputs: &[f32], top_k: usize) -> Vec<Ranked> {
        outputs.chunks(self.classes.len().max(1)).map(|row| self.rank_row(row, top_k)).collect()
    }

    fn rank_row(&self, row: &[f32], top_k: usize) -> Ranked {
        let probabilities = if self.probabilities { row.to_vec() } else { softmax(row) };
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]).then(a.cmp(&b)));
        let top_k: Vec<Scored> = order
            .iter()
            .take(top_k.max(1))
            .map(|&i| Scored { class_index: i, label: self.classes[i].clone(), probability: probabilities[i] })
            .collect();
        let prediction = Prediction {
            class_index: top_k[0].class_index,
            label: top_k[0].label.clone(),
            confidence: top_k[0].probability,
            top_k,
            incomplete: false,
        };
        Ranked { probabilities, prediction }
    }
}

pub(crate) fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] == 0.0);
    }

    #[test]
    fn ranks_best_first_with_ties_by_index() {
        let r = Ranker { classes: vec!["a".into(), "b".into(), "c".into()], top_k: 2, probabilities: true };
        let ranked = r.rank(&[0.2, 0.4, 0.4, 0.9, 0.05, 0.05], 2);
        assert_eq!(ranked[1].probabilities, [0.9, 0.05, 0.05]);
        let p: Vec<Prediction> = ranked.into_iter().map(|r| r.prediction).collect();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].label.as_str(), p[0].top_k[1].label.as_str()), ("b", "c"));
        assert_eq!(p[1].class_index, 0);
        assert_eq!(p[1].top_k.len(), 2);
    }

    #[test]
    fn error_records_name_the_path_once() {
        let path = PathBuf::from("/x/y.jpg");
        let r = FileResult { path, result: Err(ItemError::Decode(crate::DecodeError::Empty)) };
        assert_eq!(r.error_line().unwrap(), "/x/y.jpg: empty file");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"path":"/x/y.jpg","error":"empty file"}"#);
    }
}
