//! Mixed precision: which reduced type CUDA autocast computes in.
//!
//! tch 0.24 turns CUDA autocast on and off but never sets its type, which is float16 unless
//! changed. bfloat16 (GPUs from Ampere on) has float32's range, so it needs no loss scaling;
//! setting it takes libtorch's `at::autocast::set_autocast_dtype`, which tch does not wrap. It
//! is looked up in the loaded libtorch by its C++ name when first used, so a libtorch without
//! it gives a clear error instead of a failed link. The setting is per thread in libtorch, so
//! it is made on the thread that runs each autocast region.

use std::ffi::{c_void, CStr};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, TrainError};

/// The reduced type of mixed precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum AmpDtype {
    /// With dynamic loss scaling (PyTorch's `GradScaler` recipe).
    #[default]
    Float16,
    /// No loss scaling: bfloat16 keeps float32's exponent range.
    Bfloat16,
}

impl AmpDtype {
    /// Whether gradients need loss scaling to survive in this type.
    pub fn needs_loss_scaling(self) -> bool {
        self == AmpDtype::Float16
    }

    /// c10::ScalarType's value.
    pub(crate) fn scalar_type(self) -> i8 {
        match self {
            AmpDtype::Float16 => 5,   // Half
            AmpDtype::Bfloat16 => 15, // BFloat16
        }
    }
}

/// c10::DeviceType::CUDA.
const CUDA: i8 = 1;
const SET_DTYPE: &CStr = c"_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE";
const GET_DTYPE: &CStr = c"_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE";

type SetDtype = unsafe extern "C" fn(i8, i8);
type GetDtype = unsafe extern "C" fn(i8) -> i8;

/// A function of the loaded libtorch, by its (mangled) name.
pub(crate) fn lookup(name: &'static CStr) -> Result<*mut c_void, ConfigError> {
    // SAFETY: dlsym with RTLD_DEFAULT only reads the loaded objects' symbol tables.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if f.is_null() {
        Err(ConfigError::AmpUnavailable { symbol: name.to_string_lossy().into_owned() })
    } else {
        Ok(f)
    }
}

/// Sets CUDA autocast's type on this thread.
pub fn set_cuda_dtype(dtype: AmpDtype) -> Result<(), ConfigError> {
    let f = lookup(SET_DTYPE)?;
    // SAFETY: the symbol is `void at::autocast::set_autocast_dtype(c10::DeviceType,
    // c10::ScalarType)`; both are `enum class : int8_t`, passed as integers by the C++ ABI, and
    // the values are valid members.
    unsafe {
        let set = std::mem::transmute::<*mut c_void, SetDtype>(f);
        set(CUDA, dtype.scalar_type());
    }
    Ok(())
}

/// CUDA autocast's type on this thread, as libtorch reports it (`None`: neither of ours).
pub fn cuda_dtype() -> Result<Option<AmpDtype>, ConfigError> {
    let f = lookup(GET_DTYPE)?;
    // SAFETY: `c10::ScalarType at::autocast::get_autocast_dtype(c10::DeviceType)`, an int8_t enum.
    let v = unsafe {
        let get = std::mem::transmute::<*mut c_void, GetDtype>(f);
        get(CUDA)
    };
    Ok([AmpDtype::Float16, AmpDtype::Bfloat16].into_iter().find(|d| d.scalar_type() == v))
}

/// Runs `f` under autocast in `amp`'s type on `device` (CUDA's, or the CPU's through
/// [`crate::cpu_features::cpu_autocast`]), or in full precision when `amp` is `None`.
pub fn autocast<T>(amp: Option<AmpDtype>, device: tch::Device, f: impl FnOnce() -> T) -> Result<T, TrainError> {
    match amp {
        Some(dtype) if device == tch::Device::Cpu => crate::cpu_features::cpu_autocast(dtype, f),
        Some(dtype) => {
            set_cuda_dtype(dtype)?;
            Ok(tch::autocast(true, f))
        }
        None => Ok(f()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C++ entry points are found and agree with each other: the type set is the type read
    /// back (no GPU needed: the setting is libtorch state).
    #[test]
    fn sets_and_reads_cuda_autocast_type() {
        set_cuda_dtype(AmpDtype::Bfloat16).unwrap();
        assert_eq!(cuda_dtype().unwrap(), Some(AmpDtype::Bfloat16));
        set_cuda_dtype(AmpDtype::Float16).unwrap();
        assert_eq!(cuda_dtype().unwrap(), Some(AmpDtype::Float16));
    }
}
