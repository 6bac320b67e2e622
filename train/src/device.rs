//! `--device auto|cpu|cuda[:N]`: which libtorch device a choice means on this machine.

pub use infer::DeviceSpec;
use tch::{Cuda, Device};

use crate::error::DeviceError;

/// `--device`: the same grammar as `infer --ep` ([`DeviceSpec`]).
pub type DeviceChoice = DeviceSpec;

/// CUDA devices libtorch sees.
pub fn visible_gpus() -> usize {
    if Cuda::is_available() {
        Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// The device to train on, and a line describing it.
pub fn resolve(choice: DeviceChoice) -> Result<(Device, String), DeviceError> {
    let gpus = visible_gpus();
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, format!("cpu ({} threads)", tch::get_num_threads()))),
        DeviceChoice::Auto if gpus == 0 => {
            Ok((Device::Cpu, format!("cpu ({} threads; libtorch sees no CUDA GPU)", tch::get_num_threads())))
        }
        DeviceChoice::Auto => Ok((Device::Cuda(0), format!("cuda:0 (1 of {gpus} GPUs)"))),
        DeviceChoice::Cuda(_) if gpus == 0 => Err(DeviceError::NoCuda),
        DeviceChoice::Cuda(index) if index as usize >= gpus => Err(DeviceError::NoSuchGpu { index, visible: gpus }),
        DeviceChoice::Cuda(n) => Ok((Device::Cuda(n as usize), format!("cuda:{n} ({gpus} GPUs visible)"))),
    }
}
