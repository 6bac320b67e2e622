//! Splitting one batch job over many machines: `--shard K/N` takes the K-th (from 0) of N
//! disjoint parts of the sorted input list, whose union is the whole list; `--shard auto`
//! reads K and N from a Kubernetes indexed Job or a Slurm job array.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::files::Input;

/// Part `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// `--shard` as given: a fixed part, or one read from the job's environment (with the part
/// count, which a Kubernetes Job does not put in its pods' environment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardSpec {
    Fixed(Shard),
    Auto(Option<usize>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("'{0}' is not a shard: use K/N (K counts from 0 and is below N), auto or auto/N")]
    Syntax(String),
    #[error("shard {index}/{count}: K counts from 0, so it must be below N")]
    OutOfRange { index: usize, count: usize },
    #[error(
        "--shard auto: neither JOB_COMPLETION_INDEX (Kubernetes indexed Job) nor SLURM_ARRAY_TASK_ID (Slurm array) is set"
    )]
    NoJob,
    #[error("--shard auto: JOB_COMPLETION_INDEX is set; give the Job's completion count as --shard auto/N")]
    NeedCount,
    #[error("--shard auto: {name}={value} is not a number")]
    BadVariable { name: &'static str, value: String },
    #[error("--shard auto/{given}: the Slurm array has {found} tasks")]
    CountMismatch { given: usize, found: usize },
}

impl FromStr for ShardSpec {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<ShardSpec, ShardError> {
        let syntax = || ShardError::Syntax(s.to_string());
        let number = |t: &str| t.trim().parse::<usize>().map_err(|_| syntax());
        if s == "auto" {
            return Ok(ShardSpec::Auto(None));
        }
        let (k, n) = s.split_once('/').ok_or_else(syntax)?;
        let count = number(n)?;
        if count == 0 {
            return Err(syntax());
        }
        if k == "auto" {
            return Ok(ShardSpec::Auto(Some(count)));
        }
        let shard = Shard { index: number(k)?, count };
        shard.check()?;
        Ok(ShardSpec::Fixed(shard))
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    fn check(self) -> Result<Shard, ShardError> {
        if self.index < self.count {
            Ok(self)
        } else {
            Err(ShardError::OutOfRange { index: self.index, count: self.count })
        }
    }

    /// Whether the `i`-th of the sorted inputs is this part's: every N-th from K, which keeps
    /// the parts within one image of each other in size and mixes the folders.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }

    /// This part of `items`, sorted by path.
    pub fn select(&self, mut items: Vec<Input>) -> Vec<Input> {
        items.sort_by(|a, b| a.path().cmp(b.path()));
        items.into_iter().enumerate().filter(|(i, _)| self.owns(*i)).map(|(_, item)| item).collect()
    }
}

impl ShardSpec {
    /// The part to take; `var` reads the environment (a parameter so tests need not touch it).
    pub fn resolve(self, var: impl Fn(&str) -> Option<String>) -> Result<Shard, ShardError> {
        let given = match self {
            ShardSpec::Fixed(s) => return Ok(s),
            ShardSpec::Auto(n) => n,
        };
        let number = |name: &'static str| -> Result<Option<usize>, ShardError> {
            match var(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| ShardError::BadVariable { name, value: v }),
            }
        };
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = given.ok_or(ShardError::NeedCount)?;
            return Shard { index, count }.check();
        }
        let Some(id) = number("SLURM_ARRAY_TASK_ID")? else { return Err(ShardError::NoJob) };
        // Arrays may start anywhere and step (--array=1-16:3): the K-th task has id MIN + K*STEP.
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let found = number("SLURM_ARRAY_TASK_COUNT")?;
        let count = match (given, found) {
            (Some(g), Some(f)) if g != f => return Err(ShardError::CountMismatch { given: g, found: f }),
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => return Err(ShardError::NeedCount),
        };
        Shard { index: id.saturating_sub(min) / step, count }.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!("2/5".parse(), Ok(ShardSpec::Fixed(Shard { index: 2, count: 5 })));
        assert_eq!("auto".parse(), Ok(ShardSpec::Auto(None)));
        assert_eq!("auto/8".parse(), Ok(ShardSpec::Auto(Some(8))));
        assert_eq!("5/5".parse::<ShardSpec>(), Err(ShardError::OutOfRange { index: 5, count: 5 }));
        for bad in ["", "3", "1/0", "-1/3", "a/b", "1/2/3", "auto/"] {
            assert!(matches!(bad.parse::<ShardSpec>(), Err(ShardError::Syntax(_))), "{bad}");
        }
    }

    #[test]
    fn reads_kubernetes_and_slurm() {
        let k8s = env(&[("JOB_COMPLETION_INDEX", "3")]);
        assert_eq!(ShardSpec::Auto(Some(4)).resolve(&k8s), Ok(Shard { index: 3, count: 4 }));
        assert_eq!(ShardSpec::Auto(None).resolve(&k8s), Err(ShardError::NeedCount));
        assert!(ShardSpec::Auto(Some(3)).resolve(&k8s).is_err());
        let slurm =
            env(&[("SLURM_ARRAY_TASK_ID", "7"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "10")]);
        assert_eq!(ShardSpec::Auto(None).resolve(&slurm), Ok(Shard { index: 6, count: 10 }));
        assert_eq!(ShardSpec::Auto(Some(4)).resolve(&slurm), Err(ShardError::CountMismatch { given: 4, found: 10 }));
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "10"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "6"),
        ]);
        assert_eq!(ShardSpec::Auto(None).resolve(&stepped), Ok(Shard { index: 3, count: 6 }));
        assert_eq!(ShardSpec::Auto(None).resolve(env(&[])), Err(ShardError::NoJob));
        let bad = env(&[("JOB_COMPLETION_INDEX", "x")]);
        assert!(matches!(ShardSpec::Auto(Some(2)).resolve(bad), Err(ShardError::BadVariable { .. })));
    }

    /// For every N up to 9 over 0..40 inputs in scrambled order: the parts are disjoint, each
    /// is sorted, their sizes differ by at most one, and their union is the whole list.
    #[test]
    fn parts_are_disjoint_and_cover_the_list() {
        for total in 0..40usize {
            let names: Vec<PathBuf> = (0..total).map(|i| PathBuf::from(format!("d{}/{i:03}.jpg", i % 3))).collect();
            for count in 1..10 {
                let mut seen: Vec<PathBuf> = Vec::new();
                let mut sizes = Vec::new();
                for index in 0..count {
                    let scrambled: Vec<Input> = names.iter().rev().cloned().map(Input::File).collect();
                    let part: Vec<PathBuf> =
                        Shard { index, count }.select(scrambled).into_iter().map(|i| i.path().to_path_buf()).collect();
                    assert!(part.windows(2).all(|w| w[0] < w[1]));
                    sizes.push(part.len());
                    seen.extend(part);
                }
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
                seen.sort();
                let mut all = names.clone();
                all.sort();
                assert_eq!(seen, all, "{total} in {count}");
            }
        }
    }
}
