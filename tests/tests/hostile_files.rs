//! Weight files, checkpoints and ONNX models written by others: crafted files that lie about
//! sizes, nest without end, or name code to run, and seeded mutants of valid files. Each must
//! give one clear error line naming the file — never a panic, a hang, or an allocation larger
//! than the file could justify (measured by a counting allocator on the reading thread).
//!
//! `HOSTILE_MUTANTS=N` changes the number of mutants per seed file (default 2000);
//! `HOSTILE_SAVE=DIR` keeps the mutants that broke a rule.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use toolkit_tests::alloc::{measure, Counting};
use toolkit_tests::mutate::{mutate, Rng};
use toolkit_tests::run_python;
use train::pickle::Writer;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What reading a weights file may allocate: its own bytes a few times over, plus room for
/// the small structures of the format.
fn budget(file_len: usize) -> usize {
    64 * file_len + (4 << 20)
}

/// Reads `path` the ways `train --weights`, `--resume` and `train export` do. Returns the
/// first error, and the largest allocation and the peak on this thread.
fn read_as_weights(path: &Path) -> (Result<(), String>, usize, usize) {
    measure(|| {
        let state = train::weights::read_state_dict(path).map(|_| ()).map_err(|e| e.to_string());
        let info = train::checkpoint::read_info(path).map(|_| ()).map_err(|e| e.to_string());
        let last = train::checkpoint::load_last(path).map(|_| ()).map_err(|e| e.to_string());
        // read_info and load_last fail on plain state dicts by design; their messages still count.
        for r in [&info, &last] {
            if let Err(e) = r {
                assert!(!e.contains('\n'), "{}: multi-line error: {e}", path.display());
            }
        }
        state
    })
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        for (name, data) in entries {
            let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            zip.start_file(*name, opts).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

/// `data.pkl` of an OrderedDict with one tensor `w` of `size`/`stride` on storage "0".
fn tensor_pickle(size: &[i64], stride: &[i64], numel: i64) -> Vec<u8> {
    let mut w = Writer::new();
    w.global("collections", "OrderedDict");
    w.empty_tuple();
    w.reduce();
    w.mark();
    w.str("w");
    w.rebuild_tensor("FloatStorage", "0", numel, size, stride);
    w.setitems();
    w.finish()
}

fn torch_zip(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    zip_of(&[("archive/data.pkl", pickle), ("archive/byteorder", b"little"), ("archive/data/0", storage)])
}

/// Sets the uncompressed size of every zip entry named `name`, in its local header and in the
/// central directory, to `size`.
fn lie_about_size(zip: &mut [u8], name: &str, size: u32) {
    for at in 0..zip.len() - 4 {
        let (sig, off, name_at) = match &zip[at..at + 4] {
            b"PK\x03\x04" => (true, 22, 30),
            b"PK\x01\x02" => (true, 24, 46),
            _ => (false, 0, 0),
        };
        if sig && zip[at + name_at..].starts_with(name.as_bytes()) {
            zip[at + off..at + off + 4].copy_from_slice(&size.to_le_bytes());
        }
    }
}

/// A deflated entry whose headers claim 3 GB from its few hundred compressed bytes.
fn deflate_bomb_claim() -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(&tensor_pickle(&[4], &[1], 4)).unwrap();
        zip.start_file("archive/data/0", opts).unwrap();
        zip.write_all(&[0u8; 16]).unwrap();
        zip.finish().unwrap();
    }
    let mut bytes = buf.into_inner();
    lie_about_size(&mut bytes, "archive/data/0", 3_000_000_000);
    bytes
}

/// The legacy (pre-zip) format with a storage whose element count is 2^62.
fn legacy_huge_count() -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new();
    w.buf.extend_from_slice(&[0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]); // magic
    out.extend(w.finish());
    for v in [1001i64, 0] {
        let mut w = Writer::new();
        w.int(v);
        out.extend(w.finish());
    }
    out.extend(&tensor_pickle(&[4], &[1], 4)[..]);
    let mut w = Writer::new();
    w.empty_list();
    w.mark();
    w.str("0");
    w.appends();
    out.extend(w.finish());
    out.extend((1u64 << 62).to_le_bytes());
    out.extend([0u8; 16]);
    out
}

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

#[test]
fn crafted_weight_files_give_one_clear_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut exponential = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..60 {
        exponential.extend([b'(', b'h', 0, b'h', 0, b'l', b'q', 0]);
    }
    exponential.push(b'.');
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b']', 50_000));
    deep.extend(std::iter::repeat_n(b'a', 49_999));
    deep.push(b'.');
    let mut evil = Writer::new();
    evil.global("os", "system");
    evil.str("echo owned");
    evil.reduce();
    let mut stored_lie = torch_zip(&tensor_pickle(&[4], &[1], 4), &[0u8; 16]);
    lie_about_size(&mut stored_lie, "archive/data/0", 1 << 31);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("huge_shape.pt", torch_zip(&tensor_pickle(&[1 << 40, 1 << 40], &[1 << 40, 1], 4), &[0u8; 16]), "too large"),
        ("shape_vs_storage.pt", torch_zip(&tensor_pickle(&[10], &[1], 4), &[0u8; 16]), "storage '0'"),
        ("repeating_view.pt", torch_zip(&tensor_pickle(&[1 << 30, 1 << 20], &[0, 0], 1), &[0u8; 4]), "repeats"),
        ("negative_stride.pt", torch_zip(&tensor_pickle(&[4], &[-1], 4), &[0u8; 16]), "layout"),
        ("exponential_memo.pt", torch_zip(&exponential, &[]), "far more values"),
        ("deep_nesting.pt", torch_zip(&deep, &[]), "nested more than"),
        ("os_system.pt", torch_zip(&evil.finish(), &[]), "refers to 'os.system'"),
        ("stored_size_lie.pt", stored_lie, "zip"),
        ("deflate_size_lie.pt", deflate_bomb_claim(), "claims 3000000000 bytes"),
        ("legacy_huge_count.pt", legacy_huge_count(), "storage '0'"),
        (
            "huge_tensor.safetensors",
            safetensors(r#"{"w":{"dtype":"F32","shape":[1000000000,1000],"data_offsets":[0,16]}}"#, &[0u8; 16]),
            "safetensors",
        ),
        ("huge_header.safetensors", [u64::MAX.to_le_bytes().as_slice(), b"{}"].concat(), "safetensors"),
        ("empty.pt", Vec::new(), "not a torch.save file"),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let t = Instant::now();
        let (result, largest, peak) = read_as_weights(&path);
        let err = result.expect_err(name);
        println!("{name}: {err} (largest allocation {largest} B, peak {peak} B)");
        assert!(err.starts_with(&path.display().to_string()), "{name}: names the file: {err}");
        assert!(err.contains(expect), "{name}: expected '{expect}' in: {err}");
        assert!(!err.contains('\n') && !err.contains("panicked"), "{name}: {err}");
        assert!(largest.max(peak) <= budget(bytes.len()), "{name}: allocated {largest} / {peak} bytes");
        assert!(t.elapsed() < Duration::from_secs(5), "{name}: took {:?}", t.elapsed());
    }
}

fn seed_files() -> Vec<PathBuf> {
    let dir = std::env::temp_dir().join(format!("toolkit-hostile-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    run_python("make_small_checkpoint.py", &[dir.as_os_str()]);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn mutants_of_weight_files_fail_cleanly() {
    let per_seed: usize = std::env::var("HOSTILE_MUTANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let seeds = seed_files();
    for seed in &seeds {
        let (result, ..) = read_as_weights(seed);
        result.unwrap_or_else(|e| panic!("seed {} must load: {e}", seed.display()));
    }
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (mut total, mut loaded, mut crashed) = (0, 0, Vec::new());
    let mut problems = Vec::new();
    for seed in &seeds {
        let name = seed.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(seed).unwrap();
        let mut rng = Rng(0xC0FFEE ^ bytes.len() as u64);
        let path = dir.path().join(&name);
        for i in 0..per_seed {
            let mutant = mutate(&bytes, &mut rng);
            std::fs::write(&path, &mutant).unwrap();
            total += 1;
            let t = Instant::now();
            let (result, largest, peak) = read_as_weights(&path);
            match result {
                Ok(()) => loaded += 1,
                Err(e) if e.contains('\n') => problems.push(format!("{name} #{i}: multi-line error: {e}")),
                Err(e) if e.contains("crashed") => crashed.push(format!("{name} #{i}: {e}")),
                Err(_) => {}
            }
            if largest.max(peak) > budget(mutant.len()) {
                problems.push(format!("{name} #{i}: allocated {largest} at once, {peak} at peak"));
                if let Some(dir) = std::env::var_os("HOSTILE_SAVE") {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(Path::new(&dir).join(format!("{name}.{i}")), &mutant).unwrap();
                }
            }
            if t.elapsed() > Duration::from_secs(5) {
                problems.push(format!("{name} #{i}: took {:?}", t.elapsed()));
            }
        }
    }
    println!(
        "{total} mutants of {} weight files in {:.1} s: {loaded} loaded, {} refused ({} reader panics caught)",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        total - loaded,
        crashed.len()
    );
    for c in crashed.iter().take(10) {
        println!("  caught: {c}");
    }
    let _ = std::fs::remove_dir_all(seeds[0].parent().unwrap());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Files the mutation test once caught allocating far more than their size (see the folder's
/// README): each now loads or fails within the budget.
#[test]
fn recorded_hostile_weight_files_stay_bounded() {
    let dir = toolkit_tests::repo_root().join("tests/fixtures/hostile_weights");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        n += 1;
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let (result, largest, peak) = read_as_weights(&path);
        println!("{}: {result:?} (largest allocation {largest} B)", path.display());
        assert!(largest.max(peak) <= budget(len), "{}: allocated {largest} / {peak}", path.display());
    }
    assert!(n >= 4);
}

/// ONNX models from elsewhere: crafted absurd sizes, and mutants of a valid model. Loading
/// (and, when it loads, one classification) gives a result or one error line.
#[test]
fn hostile_onnx_models_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let model = |kind: &str| {
        let out = dir.path().join(format!("{kind}.onnx"));
        run_python("make_tiny_onnx.py", &[out.as_os_str(), "--kind".as_ref(), kind.as_ref()]);
        out
    };
    let build = |path: &Path| {
        infer::Classifier::builder(path)
            .execution_provider(infer::ExecutionProvider::Cpu)
            .build()
            .map_err(|e| e.to_string())
    };
    for (kind, expect) in [
        ("huge_batch", "fixed batch size 1000000000"),
        ("huge_classes", "a trial run failed"),
        ("huge_initializer", "exceeds"),
        ("dims_vs_data", "mismatch"),
        ("class_mismatch", "outputs 3 classes but its metadata names 4"),
    ] {
        let path = model(kind);
        let (result, largest, _) = measure(|| build(&path));
        let err = result.err().unwrap_or_else(|| panic!("{kind} loaded"));
        println!("{kind}: {err}");
        assert!(err.contains(expect) && err.contains(&format!("{kind}.onnx")), "{kind}: {err}");
        assert!(!err.contains('\n'));
        assert!(largest < 64 << 20, "{kind}: allocated {largest}");
    }

    let good = std::fs::read(model("good")).unwrap();
    let img = image::RgbImage::from_pixel(40, 30, image::Rgb([200, 30, 30]));
    let path = dir.path().join("mutant.onnx");
    let mut rng = Rng(0x0DD);
    let (mut loaded, n) = (0, 300);
    for i in 0..n {
        let mutant = mutate(&good, &mut rng);
        std::fs::write(&path, &mutant).unwrap();
        match build(&path) {
            Ok(c) => {
                loaded += 1;
                if let Err(e) = c.classify(&img) {
                    assert!(!e.to_string().contains('\n'), "#{i}: {e}");
                }
            }
            Err(e) => assert!(!e.contains('\n') && e.contains("mutant.onnx"), "#{i}: {e}"),
        }
    }
    println!("{n} mutants of an ONNX model: {loaded} loaded, {} refused", n - loaded);
}
