//! Weight files: reading torchvision-format state dicts (`torch.save` zip or legacy pickle,
//! or `.safetensors`), converting tensors between tch and the file format, and finding —
//! downloading if need be — torchvision's pretrained ImageNet weights.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use infer::atomic::AtomicFile;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::arch::Arch;
use crate::error::WeightsError;
use crate::torch_file::{self, DType, Obj, TensorData};

fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

fn dtype_of(kind: Kind) -> Option<DType> {
    Some(match kind {
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Int64 => DType::I64,
        Kind::Int => DType::I32,
        Kind::Int16 => DType::I16,
        Kind::Int8 => DType::I8,
        Kind::Uint8 => DType::U8,
        Kind::Bool => DType::Bool,
        _ => return None,
    })
}

/// A CPU tensor holding a copy of `t`.
pub fn to_tch(t: &TensorData) -> Result<Tensor, tch::TchError> {
    Tensor::f_from_data_size(&t.data, &t.shape, kind_of(t.dtype))
}

/// The bytes of `t`, contiguous on the CPU.
pub fn from_tch(t: &Tensor) -> Result<TensorData, tch::TchError> {
    let t = t.f_detach()?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let dtype =
        dtype_of(t.kind()).ok_or_else(|| tch::TchError::Kind(format!("cannot save tensors of kind {:?}", t.kind())))?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * dtype.size()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(TensorData { dtype, shape: t.size(), data })
}

fn tensors_of(o: &Obj) -> Option<Vec<(String, &TensorData)>> {
    let Obj::Dict { entries, .. } = o else {
        return None;
    };
    if entries.is_empty() {
        return None;
    }
    entries
        .iter()
        .map(|(k, v)| match v {
            Obj::Tensor(t) => Some((k.strip_prefix("module.").unwrap_or(k).to_string(), t)),
            _ => None,
        })
        .collect()
}

/// Finds the state dict in a loaded file: the top-level dict, or one under a usual key.
/// A `module.` prefix (from `DataParallel`) is removed.
pub fn state_dict_of(obj: &Obj) -> Option<Vec<(String, &TensorData)>> {
    tensors_of(obj)
        .or_else(|| ["model", "state_dict", "model_state_dict"].iter().find_map(|k| obj.get(k).and_then(tensors_of)))
}

/// Reads a state dict (torchvision format) into CPU tensors.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>, WeightsError> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors {
        let err = |reason: String| WeightsError::Safetensors { path: path.to_path_buf(), reason };
        let named = infer::guard::isolate("the safetensors reader", || Tensor::read_safetensors(path))
            .map_err(|p| err(p.to_string()))?
            .map_err(|e| err(infer::first_line(e)))?;
        return Ok(named.into_iter().collect());
    }
    let obj = torch_file::load(path).map_err(|source| WeightsError::File { path: path.to_path_buf(), source })?;
    let sd = state_dict_of(&obj).ok_or_else(|| WeightsError::NotStateDict { path: path.to_path_buf() })?;
    sd.into_iter().map(|(k, t)| Ok((k, to_tch(t)?))).collect()
}

/// torch's checkpoint cache: `$TORCH_HOME/hub/checkpoints`, `TORCH_HOME` defaulting to
/// `$XDG_CACHE_HOME/torch` or `~/.cache/torch`.
pub fn hub_checkpoints_dir() -> PathBuf {
    let torch_home = std::env::var_os("TORCH_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache"));
        cache.join("torch")
    });
    torch_home.join("hub").join("checkpoints")
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Download progress: bytes so far and the total when the server says it.
pub type ProgressFn<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// The pretrained ImageNet weights of `arch`: from torch's cache (hash-checked), else downloaded
/// into it with `progress` reporting, else [`WeightsError::Unavailable`].
pub fn pretrained_weights(arch: &Arch, progress: ProgressFn) -> Result<PathBuf, WeightsError> {
    pretrained_weights_in(&hub_checkpoints_dir(), arch, progress)
}

/// [`pretrained_weights`] with the cache folder given.
pub fn pretrained_weights_in(dir: &Path, arch: &Arch, progress: ProgressFn) -> Result<PathBuf, WeightsError> {
    let dir = dir.to_path_buf();
    let p = arch.pretrained;
    let path = dir.join(p.file_name);
    if path.exists() {
        check_hash(&path, p.sha256_prefix)?;
        return Ok(path);
    }
    let unavailable = |reason: String| WeightsError::Unavailable {
        file: p.file_name.to_string(),
        dir: dir.clone(),
        url: p.url.to_string(),
        reason,
    };
    std::fs::create_dir_all(&dir).map_err(|e| unavailable(format!("cannot create the folder: {e}")))?;
    download(p.url, &path, p.sha256_prefix, progress).map_err(unavailable)?;
    Ok(path)
}

fn check_hash(path: &Path, prefix: &str) -> Result<(), WeightsError> {
    let got = sha256_file(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
    if !got.starts_with(prefix) {
        return Err(WeightsError::HashMismatch { path: path.to_path_buf(), expected: prefix.to_string(), got });
    }
    Ok(())
}

/// Downloads `url` to `dest` through a temporary file, checking the SHA-256 prefix before the
/// final rename. Every network step has a timeout, so an unreachable host fails quickly.
fn download(url: &str, dest: &Path, sha256_prefix: &str, progress: ProgressFn) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_resolve(Some(Duration::from_secs(15)))
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(infer::first_line)?;
    let total =
        response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut reader = response.into_body().into_reader();
    let mut tmp = AtomicFile::create(dest).map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| format!("download interrupted: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.file().write_all(&buf[..n]).map_err(|e| format!("cannot write: {e}"))?;
        done += n as u64;
        progress(done, total);
    }
    let digest = hex(&hasher.finalize());
    if !digest.starts_with(sha256_prefix) {
        return Err(format!("downloaded file has SHA-256 {digest}, expected a prefix {sha256_prefix}"));
    }
    tmp.commit().map_err(|e| format!("cannot save {}: {e}", dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_round_trip() {
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 4.0, 5.0, 6.0]).reshape([2, 3]);
        let d = from_tch(&t).unwrap();
        assert_eq!(d.shape, [2, 3]);
        let back = to_tch(&d).unwrap();
        assert_eq!(back.size(), [2, 3]);
        assert!(back.equal(&t));
        let s = Tensor::from(7i64).reshape([] as [i64; 0]);
        let d = from_tch(&s).unwrap();
        assert_eq!(d.dtype, DType::I64);
        assert_eq!(to_tch(&d).unwrap().int64_value(&[]), 7);
    }

    #[test]
    fn finds_nested_state_dicts() {
        let t = TensorData { dtype: DType::F32, shape: vec![1], data: vec![0; 4] };
        let sd = Obj::Dict { entries: vec![("module.fc.bias".into(), Obj::Tensor(t))], ordered: true };
        let wrapped =
            Obj::Dict { entries: vec![("epoch".into(), Obj::Int(1)), ("state_dict".into(), sd)], ordered: false };
        let found = state_dict_of(&wrapped).unwrap();
        assert_eq!(found[0].0, "fc.bias");
        assert!(state_dict_of(&Obj::Int(3)).is_none());
    }

    #[test]
    fn cached_weights_are_hash_checked() {
        let d = tempfile::tempdir().unwrap();
        let arch = crate::arch::by_name("resnet18").unwrap();
        std::fs::write(d.path().join(arch.pretrained.file_name), b"not the real weights").unwrap();
        let err = pretrained_weights_in(d.path(), arch, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, WeightsError::HashMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not start with f37072fd"), "{err}");
    }

    #[test]
    fn offline_download_fails_fast_with_a_clear_reason() {
        let d = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        // A reserved TLD: resolution fails at once, as on a machine without internet access.
        let err = download("https://weights.invalid/r.pth", &d.path().join("r.pth"), "00", &mut |_, _| {}).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(40), "took {:?}", start.elapsed());
        assert!(!err.is_empty());
        assert!(!d.path().join("r.pth").exists());
    }
}
