//! Where computation runs, as users write it — `auto`, `cpu`, `cuda` or `cuda:N` — parsed in
//! one place for `infer --ep` and `train --device`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A device choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DeviceSpec {
    /// CUDA when it can be used, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// This CUDA device, or an error.
    Cuda(u32),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|&n| i32::try_from(n).is_ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("'{s}' is not a device: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in ["auto", "cpu", "cuda:0", "cuda:3"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        for bad in ["gpu", "cuda:x", "cuda:-1", "cuda:4294967295", "CPU"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.contains("is not a device"), "{bad}: {err}");
        }
    }
}
