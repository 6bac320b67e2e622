//! Reading and writing the files of Python's `torch.save`, with no Python and no TorchScript.
//!
//! Reads the zip format (PyTorch ≥ 1.6) and the legacy format before it, as torchvision's
//! published weights and users' checkpoints come in both; writes the zip format, so that
//! `torch.load("best.pt")` in Python gives a plain state dict (also with `weights_only=True`).

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::Path;

use thiserror::Error;

use crate::pickle::{self, PickleError, Value};

#[derive(Debug, Error)]
pub enum TorchFileError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a torch.save file (zip or legacy pickle format)")]
    NotTorchFile,
    #[error("corrupt zip archive: {0}")]
    Zip(String),
    #[error("corrupt pickle: {0}")]
    Pickle(#[from] PickleError),
    #[error("unsupported content: {0}")]
    Unsupported(String),
    #[error("storage '{0}' is missing or too short")]
    Storage(String),
    #[error("the reader crashed on this file ({0})")]
    Crashed(String),
}

/// Element types torch files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn storage_class(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    fn from_storage_class(name: &str) -> Option<DType> {
        [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::I32,
            DType::I16,
            DType::I8,
            DType::U8,
            DType::Bool,
        ]
        .into_iter()
        .find(|d| d.storage_class() == name)
    }
}

/// A dense, contiguous, little-endian tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub data: Vec<u8>,
}

impl TensorData {
    pub fn numel(&self) -> usize {
        self.shape.iter().map(|&d| d.max(0) as usize).product()
    }
}

/// A value read from or written to a torch file.
#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Obj>),
    /// Insertion-ordered string-keyed dict; written as `collections.OrderedDict` when `ordered`.
    Dict {
        entries: Vec<(String, Obj)>,
        ordered: bool,
    },
    Tensor(TensorData),
}

impl Obj {
    pub fn get(&self, key: &str) -> Option<&Obj> {
        match self {
            Obj::Dict { entries, .. } => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Obj::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Obj::Float(f) => Some(*f),
            Obj::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

/// 0x1950a86a20f9469cfc6c, the legacy format's magic number, as pickled (little-endian).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Reads a file written by `torch.save`.
pub fn load(path: &Path) -> Result<Obj, TorchFileError> {
    let bytes = std::fs::read(path)?;
    load_bytes(&bytes)
}

/// Runs a reader of untrusted bytes under the panic guard: a panic in the zip reader becomes
/// this file's error.
fn guarded<T>(f: impl FnOnce() -> Result<T, TorchFileError>) -> Result<T, TorchFileError> {
    infer::guard::isolate("the checkpoint reader", f).unwrap_or_else(|p| Err(TorchFileError::Crashed(p.message)))
}

/// Largest decompressed-to-compressed ratio Deflate can reach; a zip entry claiming more lies.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Reads one zip entry whole, trusting neither its declared size nor its data: at most the
/// declared size is read (more data is an error), and a declared size that the entry's
/// compressed bytes cannot produce is refused before anything is allocated.
fn read_entry<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, name: &str) -> Result<Vec<u8>, TorchFileError> {
    let zerr = |e: zip::result::ZipError| TorchFileError::Zip(e.to_string());
    let entry = zip.by_name(name).map_err(zerr)?;
    let (size, packed) = (entry.size(), entry.compressed_size());
    let stored = entry.compression() == zip::CompressionMethod::Stored;
    if (stored && size != packed) || size > packed.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(64) {
        return Err(TorchFileError::Zip(format!("entry {name} claims {size} bytes from {packed} compressed bytes")));
    }
    // Grown as data arrives: the declared size is not trusted for an allocation.
    let mut buf = Vec::new();
    entry
        .take(size.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| TorchFileError::Zip(format!("entry {name}: {e}")))?;
    if buf.len() as u64 != size {
        return Err(TorchFileError::Zip(format!("entry {name} holds {} bytes, not the {size} it declares", buf.len())));
    }
    Ok(buf)
}

/// Reads `torch.save` output held in memory.
pub fn load_bytes(bytes: &[u8]) -> Result<Obj, TorchFileError> {
    guarded(|| load_bytes_unguarded(bytes))
}

fn load_bytes_unguarded(bytes: &[u8]) -> Result<Obj, TorchFileError> {
    if bytes.starts_with(b"PK\x03\x04") {
        load_zip(std::io::Cursor::new(bytes))
    } else if bytes.first() == Some(&0x80) {
        load_legacy(bytes)
    } else {
        Err(TorchFileError::NotTorchFile)
    }
}

fn load_zip<R: Read + Seek>(reader: R) -> Result<Obj, TorchFileError> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| TorchFileError::Zip(e.to_string()))?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_owned)
        .ok_or(TorchFileError::NotTorchFile)?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let byteorder = format!("{prefix}byteorder");
    if zip.index_for_name(&byteorder).is_some() {
        let order = read_entry(&mut zip, &byteorder)?;
        if order.trim_ascii() != b"little" {
            return Err(TorchFileError::Unsupported(format!("byte order '{}'", String::from_utf8_lossy(&order))));
        }
    }
    let pkl = read_entry(&mut zip, &pkl_name)?;
    let (value, _) = pickle::unpickle(&pkl)?;
    let mut storages = |key: &str| -> Result<Vec<u8>, TorchFileError> {
        let name = format!("{prefix}data/{key}");
        if zip.index_for_name(&name).is_none() {
            return Err(TorchFileError::Storage(key.into()));
        }
        read_entry(&mut zip, &name)
    };
    convert(&value, &mut storages)
}

fn load_legacy(bytes: &[u8]) -> Result<Obj, TorchFileError> {
    let mut pos = 0;
    let next = |pos: &mut usize| -> Result<Value, TorchFileError> {
        let (v, n) = pickle::unpickle(&bytes[*pos..])?;
        *pos += n;
        Ok(v)
    };
    match next(&mut pos)? {
        Value::BigInt(m) if m == LEGACY_MAGIC => {}
        _ => return Err(TorchFileError::NotTorchFile),
    }
    let _protocol = next(&mut pos)?;
    let _sys_info = next(&mut pos)?;
    let root = next(&mut pos)?;
    let keys = next(&mut pos)?;
    // Storage payloads follow in the order of `keys`: an i64 element count, then the data.
    let mut dtypes = HashMap::new();
    collect_storage_dtypes(&root, &mut dtypes)?;
    let mut payloads: HashMap<String, Vec<u8>> = HashMap::new();
    for key in keys.as_seq().ok_or(TorchFileError::NotTorchFile)? {
        let key = key.as_str().ok_or(TorchFileError::NotTorchFile)?.to_string();
        let short = || TorchFileError::Storage(key.clone());
        let count = bytes.get(pos..pos.checked_add(8).ok_or_else(short)?).ok_or_else(short)?;
        let count = usize::try_from(u64::from_le_bytes(count.try_into().expect("8 bytes"))).map_err(|_| short())?;
        pos += 8;
        let size = dtypes.get(&key).map(|d: &DType| d.size()).unwrap_or(1);
        let end = count.checked_mul(size).and_then(|len| pos.checked_add(len)).ok_or_else(short)?;
        let data = bytes.get(pos..end).ok_or_else(short)?;
        pos = end;
        payloads.insert(key, data.to_vec());
    }
    let mut storages = |key: &str| payloads.get(key).cloned().ok_or_else(|| TorchFileError::Storage(key.into()));
    convert(&root, &mut storages)
}

fn collect_storage_dtypes(v: &Value, out: &mut HashMap<String, DType>) -> Result<(), TorchFileError> {
    match v {
        Value::PersistentId(pid) => {
            if let Ok((key, dtype)) = storage_ref(pid) {
                out.insert(key, dtype);
            }
        }
        Value::Tuple(items) | Value::List(items) => {
            for i in items {
                collect_storage_dtypes(i, out)?;
            }
        }
        Value::Dict(entries) => {
            for (_, i) in entries {
                collect_storage_dtypes(i, out)?;
            }
        }
        Value::Call(f, args) => {
            collect_storage_dtypes(f, out)?;
            for i in args {
                collect_storage_dtypes(i, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `('storage', torch.FloatStorage, key, location, numel[, view])` → (key, dtype).
fn storage_ref(pid: &Value) -> Result<(String, DType), TorchFileError> {
    let items = pid.as_seq().ok_or_else(|| TorchFileError::Unsupported("persistent id".into()))?;
    match items {
        [Value::Str(tag), Value::Global(_, class), key, ..] if tag == "storage" => {
            let dtype = DType::from_storage_class(class)
                .ok_or_else(|| TorchFileError::Unsupported(format!("storage type {class}")))?;
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return Err(TorchFileError::Unsupported("storage key".into())),
            };
            Ok((key, dtype))
        }
        _ => Err(TorchFileError::Unsupported("persistent id".into())),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>, TorchFileError> {
    v.as_seq()
        .and_then(|s| s.iter().map(Value::as_int).collect::<Option<Vec<_>>>())
        .ok_or_else(|| TorchFileError::Unsupported(format!("tensor {what}")))
}

fn convert(
    v: &Value,
    storages: &mut dyn FnMut(&str) -> Result<Vec<u8>, TorchFileError>,
) -> Result<Obj, TorchFileError> {
    Ok(match v {
        Value::None => Obj::None,
        Value::Bool(b) => Obj::Bool(*b),
        Value::Int(i) => Obj::Int(*i),
        Value::Float(f) => Obj::Float(*f),
        Value::Str(s) => Obj::Str(s.clone()),
        Value::Tuple(items) | Value::List(items) => {
            Obj::List(items.iter().map(|i| convert(i, storages)).collect::<Result<_, _>>()?)
        }
        Value::Dict(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => return Err(TorchFileError::Unsupported("non-string dict key".into())),
                };
                out.push((key, convert(v, storages)?));
            }
            Obj::Dict { entries: out, ordered: true }
        }
        Value::Call(f, args) => match (&**f, args.as_slice()) {
            (Value::Global(m, n), []) if m == "collections" && n == "OrderedDict" => {
                Obj::Dict { entries: Vec::new(), ordered: true }
            }
            (Value::Global(m, n), [inner, ..]) if m == "torch._utils" && n == "_rebuild_parameter" => {
                convert(inner, storages)?
            }
            (Value::Global(m, n), [Value::PersistentId(pid), offset, size, stride, ..])
                if m == "torch._utils" && n == "_rebuild_tensor_v2" =>
            {
                let (key, dtype) = storage_ref(pid)?;
                let offset = offset.as_int().ok_or_else(|| TorchFileError::Unsupported("offset".into()))?;
                let raw = storages(&key)?;
                Obj::Tensor(gather(&raw, dtype, offset, &ints(size, "size")?, &ints(stride, "stride")?, &key)?)
            }
            (Value::Global(m, n), _) => {
                return Err(TorchFileError::Unsupported(format!("object {m}.{n}")));
            }
            _ => return Err(TorchFileError::Unsupported("call".into())),
        },
        Value::Bytes(_) | Value::BigInt(_) => return Err(TorchFileError::Unsupported("bytes".into())),
        Value::Global(m, n) => return Err(TorchFileError::Unsupported(format!("object {m}.{n}"))),
        Value::PersistentId(_) => return Err(TorchFileError::Unsupported("bare storage".into())),
    })
}

/// Copies a (possibly strided) view out of a storage into a contiguous tensor.
fn gather(
    raw: &[u8],
    dtype: DType,
    offset: i64,
    shape: &[i64],
    stride: &[i64],
    key: &str,
) -> Result<TensorData, TorchFileError> {
    let bad = || TorchFileError::Storage(key.to_string());
    let layout = || TorchFileError::Unsupported(format!("tensor layout of storage '{key}'"));
    if shape.len() != stride.len() || offset < 0 || shape.iter().any(|&d| d < 0) || stride.iter().any(|&s| s < 0) {
        return Err(layout());
    }
    let es = dtype.size();
    // Sizes come from the file: every product is checked, and nothing is allocated before
    // the storage is known to hold the whole view.
    let too_large = || TorchFileError::Unsupported(format!("tensor shape {shape:?} of storage '{key}' is too large"));
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d as usize)).ok_or_else(too_large)?;
    let bytes = numel.checked_mul(es).ok_or_else(too_large)?;
    let mut data = Vec::new();
    if numel > 0 {
        // Highest element index touched must lie inside the storage.
        let last = shape
            .iter()
            .zip(stride)
            .try_fold(offset as usize, |acc, (&d, &s)| acc.checked_add((d as usize - 1).checked_mul(s as usize)?))
            .ok_or_else(bad)?;
        if last.checked_add(1).and_then(|n| n.checked_mul(es)).is_none_or(|end| end > raw.len()) {
            return Err(bad());
        }
        // A view can repeat elements (stride 0); copied out, it must not outgrow its storage.
        if bytes > raw.len() {
            return Err(TorchFileError::Unsupported(format!(
                "tensor of storage '{key}' repeats its {} bytes into {bytes}",
                raw.len()
            )));
        }
        data.reserve_exact(bytes);
        let contiguous = {
            let mut expect = 1i64;
            let mut ok = true;
            for (&d, &s) in shape.iter().zip(stride).rev() {
                if d != 1 && s != expect {
                    ok = false;
                }
                expect *= d;
            }
            ok
        };
        if contiguous {
            let start = offset as usize * es;
            data.extend_from_slice(&raw[start..start + numel * es]);
        } else {
            let mut idx = vec![0i64; shape.len()];
            for _ in 0..numel {
                let at = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<i64>();
                let at = at as usize * es;
                data.extend_from_slice(&raw[at..at + es]);
                for d in (0..shape.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
        }
    }
    Ok(TensorData { dtype, shape: shape.to_vec(), data })
}

/// Serialises `obj` in torch's zip format into `out`. Extra records (e.g. a JSON sidecar)
/// go into the archive beside the pickle, where `torch.load` ignores them.
pub fn write<W: Write + Seek>(out: W, obj: &Obj, extra: &[(&str, &[u8])]) -> Result<(), TorchFileError> {
    let mut storages: Vec<&TensorData> = Vec::new();
    let mut w = pickle::Writer::new();
    write_obj(&mut w, obj, &mut storages);
    let pkl = w.finish();

    let zerr = |e: zip::result::ZipError| TorchFileError::Zip(e.to_string());
    let mut zip = zip::ZipWriter::new(out);
    // torch.save aligns records to 64 bytes so that `torch.load(mmap=True)` can map them.
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).with_alignment(64);
    let add = |zip: &mut zip::ZipWriter<W>, name: &str, data: &[u8]| -> Result<(), TorchFileError> {
        zip.start_file(format!("archive/{name}"), opts).map_err(zerr)?;
        zip.write_all(data)?;
        Ok(())
    };
    add(&mut zip, "data.pkl", &pkl)?;
    add(&mut zip, ".format_version", b"1")?;
    add(&mut zip, ".storage_alignment", b"64")?;
    add(&mut zip, "byteorder", b"little")?;
    for (i, t) in storages.iter().enumerate() {
        add(&mut zip, &format!("data/{i}"), &t.data)?;
    }
    for (name, data) in extra {
        add(&mut zip, name, data)?;
    }
    add(&mut zip, "version", b"3\n")?;
    zip.finish().map_err(zerr)?;
    Ok(())
}

fn write_obj<'a>(w: &mut pickle::Writer, obj: &'a Obj, storages: &mut Vec<&'a TensorData>) {
    match obj {
        Obj::None => w.none(),
        Obj::Bool(b) => w.bool(*b),
        Obj::Int(i) => w.int(*i),
        Obj::Float(f) => w.float(*f),
        Obj::Str(s) => w.str(s),
        Obj::List(items) => {
            w.empty_list();
            if !items.is_empty() {
                w.mark();
                for i in items {
                    write_obj(w, i, storages);
                }
                w.appends();
            }
        }
        Obj::Dict { entries, ordered } => {
            if *ordered {
                w.global("collections", "OrderedDict");
                w.empty_tuple();
                w.reduce();
            } else {
                w.empty_dict();
            }
            if !entries.is_empty() {
                w.mark();
                for (k, v) in entries {
                    w.str(k);
                    write_obj(w, v, storages);
                }
                w.setitems();
            }
        }
        Obj::Tensor(t) => {
            let key = storages.len();
            storages.push(t);
            let mut stride = vec![1i64; t.shape.len()];
            for i in (0..t.shape.len().saturating_sub(1)).rev() {
                stride[i] = stride[i + 1] * t.shape[i + 1].max(1);
            }
            w.rebuild_tensor(t.dtype.storage_class(), &key.to_string(), t.numel() as i64, &t.shape, &stride);
        }
    }
}

/// Reads one extra record written by [`write`], if present.
pub fn read_extra(path: &Path, name: &str) -> Result<Option<Vec<u8>>, TorchFileError> {
    guarded(|| read_extra_unguarded(path, name))
}

fn read_extra_unguarded(path: &Path, name: &str) -> Result<Option<Vec<u8>>, TorchFileError> {
    let file = std::fs::File::open(path)?;
    let mut zip = match zip::ZipArchive::new(file) {
        Ok(z) => z,
        Err(_) => return Ok(None),
    };
    let wanted =
        zip.file_names().find(|n| n.matches('/').count() == 1 && n.ends_with(&format!("/{name}"))).map(str::to_owned);
    let Some(wanted) = wanted else {
        return Ok(None);
    };
    read_entry(&mut zip, &wanted).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn zip_round_trip() {
        let t = TensorData { dtype: DType::F32, shape: vec![2, 3], data: f32s(&[1., 2., 3., 4., 5., 6.]) };
        let n = TensorData { dtype: DType::I64, shape: vec![], data: 7i64.to_le_bytes().to_vec() };
        let obj = Obj::Dict {
            entries: vec![
                ("w".into(), Obj::Tensor(t.clone())),
                ("n".into(), Obj::Tensor(n.clone())),
                ("meta".into(), Obj::Dict { entries: vec![("epoch".into(), Obj::Int(3))], ordered: false }),
                ("names".into(), Obj::List(vec![Obj::Str("ants".into()), Obj::Str("bees".into())])),
            ],
            ordered: true,
        };
        let mut buf = std::io::Cursor::new(Vec::new());
        write(&mut buf, &obj, &[("extra/info.json", b"{}")]).unwrap();
        let back = load_bytes(buf.get_ref()).unwrap();
        assert_eq!(back.get("w"), Some(&Obj::Tensor(t)));
        assert_eq!(back.get("n"), Some(&Obj::Tensor(n)));
        assert_eq!(back.get("meta").and_then(|m| m.get("epoch")), Some(&Obj::Int(3)));
        assert_eq!(back.get("names"), obj.get("names"));
    }

    #[test]
    fn strided_views_are_gathered() {
        // storage 0..6 viewed as the transpose of a 2x3 matrix
        let raw = f32s(&[0., 1., 2., 3., 4., 5.]);
        let t = gather(&raw, DType::F32, 0, &[3, 2], &[1, 3], "0").unwrap();
        assert_eq!(t.data, f32s(&[0., 3., 1., 4., 2., 5.]));
        assert!(gather(&raw, DType::F32, 4, &[3], &[1], "0").is_err());
    }

    #[test]
    fn rejects_non_torch_files() {
        assert!(matches!(load_bytes(b"hello"), Err(TorchFileError::NotTorchFile)));
        assert!(load_bytes(b"PK\x03\x04garbage").is_err());
    }
}
