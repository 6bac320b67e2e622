//! `--device auto|cpu|cuda[:N]`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Cuda, Device};

use crate::error::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("'{s}' is not a device: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The device to train on, and a line describing it.
pub fn resolve(choice: DeviceChoice) -> Result<(Device, String), TrainError> {
    let gpus = if Cuda::is_available() { Cuda::device_count().max(0) as usize } else { 0 };
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, format!("cpu ({} threads)", tch::get_num_threads()))),
        DeviceChoice::Auto if gpus == 0 => {
            Ok((Device::Cpu, format!("cpu ({} threads; libtorch sees no CUDA GPU)", tch::get_num_threads())))
        }
        DeviceChoice::Auto => Ok((Device::Cuda(0), format!("cuda:0 (1 of {gpus} GPUs)"))),
        DeviceChoice::Cuda(_) if gpus == 0 => Err(TrainError::Device(
            "CUDA requested but libtorch sees no GPU (no driver, no device, or a CPU-only libtorch)".into(),
        )),
        DeviceChoice::Cuda(n) if n >= gpus => {
            Err(TrainError::Device(format!("cuda:{n} requested but only {gpus} GPU(s) are visible")))
        }
        DeviceChoice::Cuda(n) => Ok((Device::Cuda(n), format!("cuda:{n} ({gpus} GPUs visible)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }
}
