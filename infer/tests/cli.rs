//! The `infer` binary end to end: bad inputs, colour modes, output formats, --eval, model and
//! provider errors, exit codes.

use test_support as common;

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn infer(model: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infer"));
    cmd.arg("--model").arg(model);
    cmd
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn jsonl(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// Records by file name.
fn by_name(records: &[serde_json::Value]) -> HashMap<String, serde_json::Value> {
    records
        .iter()
        .map(|r| {
            let path = r["path"].as_str().unwrap();
            (Path::new(path).file_name().unwrap().to_string_lossy().into_owned(), r.clone())
        })
        .collect()
}

/// A PNG whose header claims 100000 × 100000 pixels, with a token of image data: small on
/// disk, 30 GB decoded.
fn huge_png() -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn every_bad_file_gets_one_record_and_the_rest_is_classified() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let dir = tmp.path().join("images");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    colour_image(RED, 60, 40).save(dir.join("red.png")).unwrap();
    colour_image(GREEN, 40, 60).save(dir.join("sub/green.jpg")).unwrap();
    colour_image(BLUE, 50, 50).save(dir.join("blue.bmp")).unwrap();
    // Not UTF-8, but a fine image.
    let odd = dir.join(std::ffi::OsStr::from_bytes(b"odd\xffname.png"));
    colour_image(BLUE, 30, 30).save(&odd).unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
    std::fs::write(dir.join("fake.jpg"), b"not an image either").unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    let mut jpg = Vec::new();
    colour_image(RED, 200, 200).write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg).unwrap();
    std::fs::write(dir.join("truncated.jpg"), &jpg[..jpg.len() / 2]).unwrap();
    let mut png = Vec::new();
    colour_image(RED, 200, 200).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    std::fs::write(dir.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(dir.join("huge.png"), huge_png()).unwrap();
    std::os::unix::fs::symlink(dir.join("gone.jpg"), dir.join("dangling.jpg")).unwrap();
    let locked = dir.join("locked.png");
    colour_image(GREEN, 30, 30).save(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;

    let out = infer(&model).args(["--format", "jsonl"]).arg(&dir).arg(dir.join("notes.txt")).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let records = jsonl(&out);
    let named = by_name(&records);
    // Each input exactly once: 4 good, 1 incomplete, 6 bad (notes.txt given explicitly) and
    // the locked one, in input order.
    assert_eq!(records.len(), 12, "{records:#?}");
    let mut paths: Vec<&str> = records.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert!(paths.pop().unwrap().ends_with("notes.txt"));
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert_eq!(named["red.png"]["label"], "red");
    assert_eq!(named["green.jpg"]["label"], "green");
    assert_eq!(named["blue.bmp"]["label"], "blue");
    assert_eq!(named["odd\u{fffd}name.png"]["label"], "blue");
    let error =
        |name: &str| named[name]["error"].as_str().unwrap_or_else(|| panic!("{name}: {:?}", named[name])).to_string();
    assert!(error("notes.txt").contains("not an image"));
    assert!(error("fake.jpg").contains("not an image"));
    assert_eq!(error("empty.png"), "empty file");
    // A JPEG cut short is decoded as far as its data goes, as libjpeg does, and says so.
    assert_eq!(named["truncated.jpg"]["label"], "red", "{:?}", named["truncated.jpg"]);
    assert_eq!(named["truncated.jpg"]["incomplete"], true, "{:?}", named["truncated.jpg"]);
    assert!(named["red.png"].get("incomplete").is_none(), "the field is written only when true");
    assert!(
        error("truncated.png").contains("truncated") || error("truncated.png").contains("corrupt"),
        "{}",
        error("truncated.png")
    );
    assert!(error("huge.png").contains("above the limit"), "{}", error("huge.png"));
    assert_eq!(error("dangling.jpg"), "broken symbolic link");
    if as_root {
        assert_eq!(named["locked.png"]["label"], "green");
    } else {
        assert!(error("locked.png").contains("ermission"), "{}", error("locked.png"));
    }
    for r in &records {
        assert!(!r["path"].as_str().unwrap().is_empty());
    }
    assert!(err.contains("failed"), "{err}");
}

#[test]
fn colour_modes_and_exif_rotation_classify_like_rgb_upright() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    run_python("make_modes.py", &[tmp.path().as_os_str()]);
    let out = infer(&model).args(["--format", "jsonl", "--top-k", "3"]).arg(tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let named = by_name(&jsonl(&out));
    let probs = |name: &str| -> Vec<f64> {
        let mut v: Vec<(u64, f64)> = named[name]["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["class_index"].as_u64().unwrap(), s["probability"].as_f64().unwrap()))
            .collect();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|x| x.1).collect()
    };
    for (file, reference) in [
        ("gray.png", "gray.ref.png"),
        ("rgba.png", "rgba.ref.png"),
        ("la.png", "la.ref.png"),
        ("palette.png", "palette.ref.png"),
        ("palette_gif.gif", "palette_gif.ref.png"),
        ("gray16.png", "gray16.ref.png"),
        ("cmyk.jpg", "cmyk.ref.png"),
        ("exif_rotated.jpg", "exif_rotated.ref.png"),
    ] {
        let (a, b) = (probs(file), probs(reference));
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(diff < 0.01, "{file}: {a:?} vs {reference}: {b:?}");
    }
    // The rotation matters to this model: the stored (sideways) pixels classify differently.
    let (upright, rgb) = (probs("exif_rotated.ref.png"), probs("rgb.png"));
    assert!(upright.iter().zip(&rgb).all(|(x, y)| (x - y).abs() < 0.01));
}

#[test]
fn output_formats_and_output_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let dir = tmp.path().join("img");
    std::fs::create_dir(&dir).unwrap();
    colour_image(RED, 40, 40).save(dir.join("a, red.png")).unwrap();
    colour_image(BLUE, 40, 40).save(dir.join("b.png")).unwrap();

    let table = infer(&model).arg(&dir).output().unwrap();
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("red ") && lines[0].ends_with("a, red.png"), "{text}");
    assert!(lines[1].starts_with("blue") && lines[1].contains('%'), "{text}");
    let summary = stderr(&table);
    assert!(
        summary.contains("2 images classified, 0 failed")
            && summary.contains("images/s")
            && summary.contains("CPUExecutionProvider"),
        "{summary}"
    );

    let csv = infer(&model).args(["--format", "csv", "--top-k", "2"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&csv.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // The last column says whether the image came from a file cut short (empty: it did not).
    assert_eq!(lines[0], "path,label,class_index,confidence,top_k,error,incomplete");
    assert!(lines[1].starts_with('"') && lines[1].contains("a, red.png\",red,0,"), "{}", lines[1]);
    assert_eq!(csv_fields(lines[2]).len(), 7, "{}", lines[2]);

    let file = tmp.path().join("out.jsonl");
    std::fs::write(&file, "previous").unwrap();
    let to_file = infer(&model).args(["--format", "jsonl", "--output"]).arg(&file).arg(&dir).output().unwrap();
    assert_eq!(to_file.status.code(), Some(0));
    assert!(to_file.stdout.is_empty());
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written.lines().count(), 2);
    assert!(written.contains("\"top_k\""));
    let leftovers = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0);

    // A fatal error leaves an existing output file as it was.
    let failed = infer(&tmp.path().join("none.onnx")).arg("--output").arg(&file).arg(&dir).output().unwrap();
    assert_eq!(failed.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);
}

#[test]
fn eval_reports_accuracy_and_confusion_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let root = tmp.path().join("labelled");
    for (class, rgb) in [("red", RED), ("green", GREEN), ("blue", BLUE)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..2 {
            colour_image(rgb, 40 + i, 40).save(root.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    // One green picture filed under red: one error in the matrix.
    colour_image(GREEN, 40, 40).save(root.join("red/odd.png")).unwrap();
    let png = tmp.path().join("cm.png");
    let out = infer(&model).arg("--eval").arg("--confusion-png").arg(&png).arg(&root).arg("-q").output().unwrap();
    let (err, report) = (stderr(&out), String::from_utf8_lossy(&out.stdout).into_owned());
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(report.contains("accuracy 0.8571 (6 of 7 images)"), "{report}");
    assert!(report.contains("confusion matrix (rows: true class"), "{report}");
    assert!(image::open(&png).unwrap().width() > 100);

    std::fs::create_dir(root.join("purple")).unwrap();
    let out = infer(&model).arg("--eval").arg(&root).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("'purple' is not one of the model's classes"), "{}", stderr(&out));
}

/// Fatal errors: exit status 1 and one `error:` line.
fn fatal(cmd: &mut Command, expect: &str) {
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains(expect), "expected '{expect}' in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unusable_models_and_inputs_are_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.png");
    colour_image(RED, 30, 30).save(&img).unwrap();
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not a protobuf").unwrap();

    fatal(infer(&tmp.path().join("missing.onnx")).arg(&img), "missing.onnx: model file not found");
    fatal(infer(&junk).arg(&img), "junk.onnx: not a usable ONNX model");
    fatal(infer(&tiny_model(tmp.path(), "rank3")).arg(&img), "has rank 3");
    fatal(infer(&tiny_model(tmp.path(), "class_mismatch")).arg(&img), "outputs 3 classes but its metadata names 4");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let good = tiny_model(tmp.path(), "good");
    fatal(infer(&good).arg(&empty), "no images found");
    fatal(infer(&good).args(["--ep", "cuda"]).arg(&img), "execution provider cuda:0");
    if !std::path::Path::new("/proc/driver/nvidia/version").exists() {
        // The reason is the missing driver, not whatever ONNX Runtime says after.
        fatal(infer(&good).args(["--ep", "cuda"]).arg(&img), "no NVIDIA driver (libcuda.so.1");
    }
    // A model made by the int8 export says so in the summary.
    let int8 = stderr(&infer(&tiny_model(tmp.path(), "int8_metadata")).arg(&img).output().unwrap());
    assert!(int8.contains("int8 model (validation accuracy 0.8900 vs 0.9000 in fp32)"), "{int8}");
    let usage = infer(&good).args(["--format", "xml"]).arg(&img).output().unwrap();
    assert_eq!(usage.status.code(), Some(1), "usage errors are fatal, not 'some inputs failed'");

    // Without metadata: ImageNet preprocessing and numbered classes.
    let out = infer(&tiny_model(tmp.path(), "no_metadata")).args(["--format", "jsonl"]).arg(&img).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(jsonl(&out)[0]["label"], "class_0");
    // A model that outputs probabilities only.
    let out = infer(&tiny_model(tmp.path(), "probabilities")).args(["--format", "jsonl"]).arg(&img).output().unwrap();
    assert_eq!(jsonl(&out)[0]["label"], "red");
    // auto falls back to the CPU; without an NVIDIA GPU it says why only with --verbose, once.
    let gpu = Path::new("/proc/driver/nvidia/version").exists() || Path::new("/dev/nvidia0").exists();
    let quiet = stderr(&infer(&good).arg(&img).output().unwrap());
    assert_eq!(quiet.matches("CUDA not used").count(), usize::from(gpu), "{quiet}");
    assert!(quiet.contains("CPUExecutionProvider"));
    let verbose = stderr(&infer(&good).arg("--verbose").arg(&img).output().unwrap());
    assert_eq!(verbose.matches("CUDA not used").count(), 1, "{verbose}");
}

#[test]
fn batch_sizes_give_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let dir = tmp.path().join("img");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..7u8 {
        colour_image([i * 30, 250 - i * 30, 100], 30 + u32::from(i), 30).save(dir.join(format!("{i}.png"))).unwrap();
    }
    let run = |b: &str| -> Vec<(String, String, f64)> {
        let out = infer(&model).args(["--format", "jsonl", "--batch-size", b]).arg(&dir).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        jsonl(&out)
            .iter()
            .map(|r| {
                (
                    r["path"].as_str().unwrap().to_string(),
                    r["label"].as_str().unwrap().to_string(),
                    r["confidence"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let one = run("1");
    assert_eq!(one.len(), 7);
    for other in [run("3"), run("32")] {
        for (a, b) in one.iter().zip(&other) {
            assert_eq!((&a.0, &a.1), (&b.0, &b.1));
            assert!((a.2 - b.2).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}

/// Every seed image of every format, the recorded crashers, and damaged copies of the seeds
/// (cut short, bits flipped): the run goes on to the end with one record per file.
#[test]
fn a_folder_of_every_format_and_damaged_file_gives_one_record_each() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let dir = tmp.path().join("mixed");
    std::fs::create_dir(&dir).unwrap();
    let mut files = 0;
    for folder in ["images", "crashers"] {
        for entry in std::fs::read_dir(fixtures(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "py" || e == "md") {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(dir.join(&name), &bytes).unwrap();
            let ext = path.extension().unwrap().to_string_lossy().into_owned();
            std::fs::write(dir.join(format!("{name}.cut.{ext}")), &bytes[..bytes.len() * 2 / 3]).unwrap();
            let mut flipped = bytes.clone();
            for k in 0..6 {
                let i = (k * 7919 + 13) % flipped.len();
                flipped[i] ^= 0x5A;
            }
            std::fs::write(dir.join(format!("{name}.flip.{ext}")), &flipped).unwrap();
            files += 3;
        }
    }
    let out = infer(&model).args(["--format", "jsonl", "--batch-size", "7"]).arg(&dir).output().unwrap();
    let err = stderr(&out);
    assert!(matches!(out.status.code(), Some(0 | 2)), "{err}");
    assert!(!err.contains("panicked") && !err.contains("internal error") && !err.contains("abort"), "{err}");
    let records = jsonl(&out);
    assert_eq!(records.len(), files, "{err}");
    let named = by_name(&records);
    // Every undamaged seed of every format is classified.
    for entry in std::fs::read_dir(fixtures("images")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".py") {
            assert!(named[&name].get("label").is_some(), "{name}: {}", named[&name]);
        }
    }
    let errors = records.iter().filter(|r| r.get("error").is_some()).count();
    println!("{files} files: {} classified, {errors} error records", files - errors);
}

/// Many slow-to-decode images (one large noisy JPEG, linked many times).
fn slow_inputs(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut seed = 1u32;
    let img = image::RgbImage::from_fn(2000, 1500, |_, _| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let b = seed.to_be_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    let big = dir.join("big.jpg");
    img.save(&big).unwrap();
    for i in 0..n {
        std::os::unix::fs::symlink(&big, dir.join(format!("{i:04}.jpg"))).unwrap();
    }
}

/// SIGTERM or SIGINT part-way: --output is left as it was, the results so far are in
/// FILE.partial (whole records), and the message says so.
#[test]
fn a_stopped_run_keeps_the_old_output_and_the_results_so_far() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let dir = tmp.path().join("slow");
    slow_inputs(&dir, 400);
    for (signal, code, word) in [("-TERM", 143, "terminated"), ("-INT", 130, "interrupted")] {
        let file = tmp.path().join("results.jsonl");
        std::fs::write(&file, "previous\n").unwrap();
        let partial = tmp.path().join("results.jsonl.partial");
        let _ = std::fs::remove_file(&partial);
        let child = infer(&model)
            .args(["--format", "jsonl", "--batch-size", "4", "--output"])
            .arg(&file)
            .arg(&dir)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let sent = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "previous\n", "{err}");
        let kept = std::fs::read_to_string(&partial).unwrap_or_else(|e| panic!("{e}: {err}"));
        let lines: Vec<&str> = kept.lines().collect();
        assert!(!lines.is_empty() && lines.len() < 401, "{} records", lines.len());
        for l in &lines {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(r["label"].is_string(), "{l}");
        }
        let last = err.lines().last().unwrap();
        assert!(last.starts_with(&format!("{word}: ")), "{err}");
        assert!(last.contains("left as it was") && last.contains("results.jsonl.partial"), "{last}");
        assert!(last.contains(&format!("{} of 401 results", lines.len())), "{last}");
    }
}

/// Splits one CSV line into fields, honouring quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Class names holding `;`, `:`, `,` and quotes survive the CSV's top_k field, which is a JSON
/// array: the ranks can be read back exactly.
#[test]
fn csv_top_k_is_unambiguous_whatever_the_class_names() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("odd.onnx");
    run_python("make_tiny_onnx.py", &[model.as_os_str(), "--kind".as_ref(), "odd_names".as_ref()]);
    let img = tmp.path().join("x.png");
    colour_image(RED, 30, 30).save(&img).unwrap();
    let out = infer(&model).args(["--format", "csv", "--top-k", "3"]).arg(&img).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let fields = csv_fields(text.lines().nth(1).unwrap());
    assert_eq!(fields.len(), 7, "{text}");
    let top: Vec<serde_json::Value> = serde_json::from_str(&fields[4]).unwrap();
    let labels: Vec<&str> = top.iter().map(|s| s["label"].as_str().unwrap()).collect();
    assert_eq!(labels.len(), 3);
    assert_eq!(labels[0], "red; \"rot\": 1,2");
    assert!(labels.contains(&"grün:vert") && labels.contains(&"blue;bleu"), "{labels:?}");
    let sum: f64 = top.iter().map(|s| s["probability"].as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4);
}

/// `--eval`: the report first, on stdout; per-image records only to --output; the confusion
/// matrix named after the evaluated folder, and a replaced one said to be replaced; the gallery
/// with mistakes framed red.
#[test]
fn eval_prints_the_report_and_names_its_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let root = tmp.path().join("holdout");
    for (class, rgb) in [("red", RED), ("green", GREEN), ("blue", BLUE)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        colour_image(rgb, 40, 40).save(root.join(class).join("1.png")).unwrap();
    }
    colour_image(GREEN, 40, 40).save(root.join("red/odd.png")).unwrap();
    let gallery = tmp.path().join("gallery.png");
    let run = || infer(&model).arg("--eval").arg("--gallery").arg(&gallery).arg(&root).output().unwrap();
    let out = run();
    let (err, stdout) = (stderr(&out), String::from_utf8_lossy(&out.stdout).into_owned());
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout.starts_with("accuracy 0.7500 (3 of 4 images)"), "{stdout}");
    assert!(!stdout.contains("1.png"), "no per-image lines without --output: {stdout}");
    let png = tmp.path().join("confusion_matrix_holdout.png");
    assert!(err.contains(&format!("confusion matrix saved to {}", png.display())), "{err}");
    assert!(png.is_file());
    let g = image::open(&gallery).unwrap().to_rgb8();
    let red = g.pixels().filter(|p| p.0 == [214, 39, 40]).count();
    let green = g.pixels().filter(|p| p.0 == [44, 160, 44]).count();
    assert!(red > 100 && green > 300, "red {red} green {green}");
    let again = run();
    assert!(stderr(&again).contains(&format!("confusion matrix replaced {}", png.display())), "{}", stderr(&again));
    // With --output, the per-image records go there.
    let records = tmp.path().join("records.jsonl");
    let out =
        infer(&model).args(["--eval", "--format", "jsonl", "--output"]).arg(&records).arg(&root).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&records).unwrap().lines().count(), 4);
}

/// `--labels FILE` names the classes of a foreign model that carries none; the count must be
/// the model's, and a model that names its classes keeps them.
#[test]
fn labels_name_the_classes_of_a_model_without_names() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tiny_model(tmp.path(), "no_metadata");
    let img = tmp.path().join("x.png");
    colour_image(GREEN, 30, 30).save(&img).unwrap();
    let label = |args: &[&str], model: &Path| {
        let out = infer(model).args(["--format", "jsonl"]).args(args).arg(&img).output().unwrap();
        (out.status.code(), jsonl(&out).first().map(|r| r["label"].clone()), stderr(&out))
    };
    let (code, name, _) = label(&[], &foreign);
    assert_eq!((code, name), (Some(0), Some(serde_json::json!("class_1"))));

    let file = tmp.path().join("labels.txt");
    std::fs::write(&file, "rouge\r\nvert\nbleu\n").unwrap();
    let (code, name, err) = label(&["--labels", file.to_str().unwrap()], &foreign);
    assert_eq!((code, name), (Some(0), Some(serde_json::json!("vert"))), "{err}");

    std::fs::write(&file, "rouge\nvert\n").unwrap();
    let (code, _, err) = label(&["--labels", file.to_str().unwrap()], &foreign);
    assert_eq!(code, Some(1));
    assert!(err.contains("the model outputs 3 classes but --labels names 2"), "{err}");

    let (code, _, err) = label(&["--labels", file.to_str().unwrap()], &tiny_model(tmp.path(), "good"));
    assert_eq!(code, Some(1));
    assert!(err.contains("names its 3 classes itself"), "{err}");
    let (code, _, err) = label(&["--labels", "/nonexistent/labels.txt"], &foreign);
    assert_eq!(code, Some(1));
    assert!(err.lines().last().unwrap().contains("/nonexistent/labels.txt: cannot read the labels file"), "{err}");
}
