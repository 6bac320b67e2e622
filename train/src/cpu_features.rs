//! Mixed precision on the CPU: whether the processor computes bfloat16 natively, and CPU
//! autocast.
//!
//! libtorch's CPU autocast (bfloat16 by default) runs convolutions and matrix products in
//! bfloat16 through oneDNN. That is fast only with native bfloat16 instructions — x86's
//! AVX512-BF16 (Cooper Lake, Zen 4 and later) or AMX-BF16 (Sapphire Rapids and later), Arm's
//! BF16 extension (Neoverse V1/N2, Graviton 3, Apple M2 and later); elsewhere oneDNN converts to
//! float32 and back around every operation and training runs slower than in float32, so
//! `--amp` on such a CPU deserves a warning ([`cpu_amp_warning`]).
//!
//! tch 0.24 only drives CUDA autocast (`tch::autocast` is a no-op without CUDA). CPU autocast
//! is reachable the way [`crate::amp`] reaches the CUDA dtype: libtorch exports
//! `at::autocast::set_autocast_enabled(c10::DeviceType, bool)`, `is_autocast_enabled`,
//! `set_autocast_dtype`, `increment_nesting`, `decrement_nesting` and `clear_cache`, looked up
//! by their C++ names in the loaded library ([`cpu_autocast`]).

use std::ffi::{c_void, CStr};

use serde::Serialize;

use crate::amp::{self, AmpDtype};
use crate::error::{ConfigError, TrainError};

/// What the processor offers for bfloat16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Bf16Support {
    /// x86 AVX512-BF16 (and AVX-512 enabled by the OS).
    pub avx512_bf16: bool,
    /// x86 AMX-BF16 (with the tile state enabled by the OS).
    pub amx_bf16: bool,
    /// Arm's BF16 extension.
    pub arm_bf16: bool,
}

impl Bf16Support {
    /// The running processor's.
    pub fn detect() -> Bf16Support {
        #[cfg(target_arch = "x86_64")]
        {
            let (avx512_bf16, amx_bf16) = x86::detect();
            Bf16Support { avx512_bf16, amx_bf16, arm_bf16: false }
        }
        #[cfg(target_arch = "aarch64")]
        {
            Bf16Support { arm_bf16: std::arch::is_aarch64_feature_detected!("bf16"), ..Default::default() }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Bf16Support::default()
        }
    }

    /// Whether bfloat16 arithmetic is native.
    pub fn native(&self) -> bool {
        self.avx512_bf16 || self.amx_bf16 || self.arm_bf16
    }

    /// E.g. `AVX512-BF16, AMX-BF16` or `none`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> =
            [(self.avx512_bf16, "AVX512-BF16"), (self.amx_bf16, "AMX-BF16"), (self.arm_bf16, "Arm BF16")]
                .into_iter()
                .filter_map(|(on, name)| on.then_some(name))
                .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};

    /// XCR0, the state components the OS saves.
    ///
    /// # Safety
    /// The processor must support XSAVE with OSXSAVE set.
    #[target_feature(enable = "xsave")]
    unsafe fn xcr0() -> u64 {
        // SAFETY: the caller guarantees XSAVE; XCR0 (register 0) always exists then.
        unsafe { _xgetbv(0) }
    }

    /// (AVX512-BF16, AMX-BF16): CPUID leaf 7 sub-leaf 1 EAX bit 5, leaf 7 EDX bit 22; AMX also
    /// needs XCR0's tile bits 17 and 18.
    pub fn detect() -> (bool, bool) {
        if __cpuid(0).eax < 7 {
            return (false, false);
        }
        let leaf7 = __cpuid_count(7, 0);
        let leaf7_1 = __cpuid_count(7, 1);
        let avx512_bf16 = std::arch::is_x86_feature_detected!("avx512f") && (leaf7_1.eax >> 5) & 1 == 1;
        let osxsave = (__cpuid(1).ecx >> 27) & 1 == 1;
        let tiles = osxsave
            && std::arch::is_x86_feature_detected!("xsave")
            // SAFETY: the processor supports XSAVE (checked above), which xgetbv needs.
            && unsafe { xcr0() } & (0b11 << 17) == (0b11 << 17);
        let amx_bf16 = (leaf7.edx >> 22) & 1 == 1 && tiles;
        (avx512_bf16, amx_bf16)
    }
}

/// The warning for `--amp` on a CPU without native bfloat16, naming what is missing.
pub fn cpu_amp_warning(support: &Bf16Support) -> Option<String> {
    (!support.native()).then(|| {
        "--amp on this CPU: it has no native bfloat16 (AVX512-BF16, AMX-BF16 or Arm BF16), so \
         bfloat16 is emulated and training is likely slower than without --amp"
            .to_string()
    })
}

/// c10::DeviceType::CPU.
const CPU: i8 = 0;
const SET_ENABLED: &CStr = c"_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb";
const IS_ENABLED: &CStr = c"_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE";
const SET_DTYPE: &CStr = c"_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE";
const INCREMENT: &CStr = c"_ZN2at8autocast17increment_nestingEv";
const DECREMENT: &CStr = c"_ZN2at8autocast17decrement_nestingEv";
const CLEAR_CACHE: &CStr = c"_ZN2at8autocast11clear_cacheEv";

/// The libtorch entry points of CPU autocast.
struct Autocast {
    set_enabled: unsafe extern "C" fn(i8, bool),
    is_enabled: unsafe extern "C" fn(i8) -> bool,
    set_dtype: unsafe extern "C" fn(i8, i8),
    increment: unsafe extern "C" fn() -> i64,
    decrement: unsafe extern "C" fn() -> i64,
    clear_cache: unsafe extern "C" fn(),
}

fn autocast_api() -> Result<Autocast, ConfigError> {
    let f = |name| amp::lookup(name);
    // SAFETY: each symbol is the libtorch function of that mangled name, whose C++ signature
    // is: `void set_autocast_enabled(c10::DeviceType, bool)`, `bool is_autocast_enabled(
    // c10::DeviceType)`, `void set_autocast_dtype(c10::DeviceType, c10::ScalarType)` (both enums
    // `int8_t`, passed as integers), `int64_t increment_nesting()`, `int64_t
    // decrement_nesting()`, `void clear_cache()`.
    unsafe {
        Ok(Autocast {
            set_enabled: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(i8, bool)>(f(SET_ENABLED)?),
            is_enabled: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(i8) -> bool>(f(IS_ENABLED)?),
            set_dtype: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(i8, i8)>(f(SET_DTYPE)?),
            increment: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> i64>(f(INCREMENT)?),
            decrement: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> i64>(f(DECREMENT)?),
            clear_cache: std::mem::transmute::<*mut c_void, unsafe extern "C" fn()>(f(CLEAR_CACHE)?),
        })
    }
}

/// Whether CPU autocast is on for this thread.
pub fn cpu_autocast_enabled() -> Result<bool, ConfigError> {
    let api = autocast_api()?;
    // SAFETY: see `autocast_api`; the argument is a valid DeviceType.
    Ok(unsafe { (api.is_enabled)(CPU) })
}

/// Runs `f` under CPU autocast in `dtype` on this thread (libtorch's setting is per thread),
/// as `torch.autocast("cpu", dtype)` does: the previous state is restored after, and the cast
/// cache cleared when the outermost region ends.
pub fn cpu_autocast<T>(dtype: AmpDtype, f: impl FnOnce() -> T) -> Result<T, TrainError> {
    let api = autocast_api()?;
    // SAFETY: see `autocast_api`; arguments are valid enum values.
    let prev = unsafe {
        let prev = (api.is_enabled)(CPU);
        (api.set_dtype)(CPU, dtype.scalar_type());
        (api.set_enabled)(CPU, true);
        (api.increment)();
        prev
    };
    let out = f();
    // SAFETY: as above.
    unsafe {
        if (api.decrement)() == 0 {
            (api.clear_cache)();
        }
        (api.set_enabled)(CPU, prev);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn detection_is_consistent() {
        let s = Bf16Support::detect();
        assert_eq!(s.native(), s.describe() != "none");
        assert_eq!(cpu_amp_warning(&s).is_some(), !s.native());
        println!("bfloat16 support: {}", s.describe());
        let none = Bf16Support::default();
        assert!(cpu_amp_warning(&none).unwrap().contains("emulated"));
    }

    /// A convolution under CPU autocast computes in bfloat16; outside, in float32; the state is
    /// restored after the region.
    #[test]
    fn conv_under_cpu_autocast_is_bfloat16() {
        let x = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let conv = || x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert!(!cpu_autocast_enabled().unwrap());
        let inside = cpu_autocast(AmpDtype::Bfloat16, || {
            assert!(cpu_autocast_enabled().unwrap());
            // Nested regions keep it on.
            cpu_autocast(AmpDtype::Bfloat16, conv).unwrap()
        })
        .unwrap();
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert!(!cpu_autocast_enabled().unwrap(), "restored");
        assert_eq!(conv().kind(), Kind::Float);
        let diff = (inside.to_kind(Kind::Float) - conv()).abs().max().double_value(&[]);
        assert!(diff < 0.3, "bfloat16 result close to float32: {diff}");
    }
}
