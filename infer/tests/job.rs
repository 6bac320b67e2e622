//! The batch job as a library: what `infer PATH...` does, run from Rust with the job's own
//! types — records, resume, evaluation with pictures, a stop request, and the exit status.

use std::path::Path;
use std::sync::atomic::AtomicUsize;

use infer::job::{confusion_png_path, partial_path, Job, JobConfig, JobError, Outcome};
use infer::records::Format;
use infer::{Classifier, ExecutionProvider};
use test_support::*;

fn classifier(model: &Path) -> Classifier {
    Classifier::builder(model).execution_provider(ExecutionProvider::Cpu).batch_size(2).build().unwrap()
}

/// `root/<class>/<i>.png` for the tiny model's classes, plus one broken file in `blue/`.
fn labelled(root: &Path) {
    for (class, rgb) in [("red", RED), ("green", GREEN), ("blue", BLUE)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..3 {
            colour_image(rgb, 20 + i, 16).save(root.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(root.join("blue/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    // Files a folder of pictures often holds besides them.
    std::fs::write(root.join("red/notes.txt"), b"taken in 2024").unwrap();
    std::fs::write(root.join("green/logo.svg"), b"<svg xmlns='http://www.w3.org/2000/svg'/>").unwrap();
}

#[test]
fn a_job_writes_its_records_resumes_and_sums_up() {
    let tmp = tempfile::tempdir().unwrap();
    let c = classifier(&tiny_model(tmp.path(), "good"));
    let data = tmp.path().join("data");
    labelled(&data);
    let out = tmp.path().join("results.jsonl");
    let config = JobConfig {
        paths: vec![data.clone(), tmp.path().join("missing.png")],
        format: Format::Jsonl,
        output: Some(out.clone()),
        ..Default::default()
    };
    let (mut terminal, mut notes) = (Vec::new(), Vec::new());
    let summary = Job::new(config.clone()).run(&c, &mut terminal, &mut notes, &AtomicUsize::new(0)).unwrap();
    assert_eq!(summary.outcome, Outcome::Completed);
    // 10 files and a missing path: 9 classified, the broken file and the path failed.
    assert_eq!((summary.total, summary.written, summary.failures, summary.files), (11, 11, 2, 10));
    assert_eq!(summary.exit_code(), 2);
    assert!(terminal.is_empty(), "records went to the output file");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 11);
    assert!(text.lines().any(|l| l.contains("missing.png") && l.contains("no such file or folder")), "{text}");
    assert!(summary.line(&c, 1.0).starts_with("9 images classified, 2 failed"), "{}", summary.line(&c, 1.0));
    // What was passed over is said, by kind.
    assert_eq!(summary.ignored.total(), 2);
    let said = "passed over 2 non-image file(s) in the folders: 1 .svg (vector images are not read), 1 .txt";
    assert!(notes.iter().any(|n| n == said), "{notes:?}");

    // Resumed with every record in place: nothing to do, the file untouched.
    let resumed = JobConfig { resume: true, ..config };
    let summary = Job::new(resumed).run(&c, &mut terminal, &mut notes, &AtomicUsize::new(0)).unwrap();
    assert_eq!((summary.outcome, summary.exit_code()), (Outcome::NothingToDo, 0));
    assert!(notes.last().unwrap().starts_with("nothing to do: the 11 inputs already have records"), "{notes:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

#[test]
fn evaluation_counts_by_true_class_and_draws_its_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "good");
    let c = classifier(&model);
    let data = tmp.path().join("val");
    labelled(&data);
    let gallery = tmp.path().join("gallery.png");
    let config =
        JobConfig { paths: vec![data.clone()], eval: true, gallery: Some(gallery.clone()), ..Default::default() };
    let (mut terminal, mut notes) = (Vec::new(), Vec::new());
    let summary = Job::new(config).run(&c, &mut terminal, &mut notes, &AtomicUsize::new(0)).unwrap();
    let eval = summary.evaluation.as_ref().unwrap();
    assert_eq!((eval.total(), eval.correct()), (9, 9));
    assert_eq!(eval.matrix, [[3, 0, 0], [0, 3, 0], [0, 0, 3]]);
    assert!(terminal.is_empty(), "with eval and no output, records are not written: {terminal:?}");
    let png = confusion_png_path(&model, &data);
    assert_eq!(png, tmp.path().join("confusion_matrix_val.png"));
    assert!(png.is_file() && gallery.is_file());
    assert!(notes.iter().any(|n| n == &format!("confusion matrix saved to {}", png.display())), "{notes:?}");
    assert!(notes.iter().any(|n| n == &format!("gallery of 9 images saved to {}", gallery.display())), "{notes:?}");

    let two = JobConfig { paths: vec![data.clone(), data], eval: true, ..Default::default() };
    let err = Job::new(two).run(&c, &mut terminal, &mut notes, &AtomicUsize::new(0)).unwrap_err();
    assert!(matches!(err, JobError::EvalNeedsOneFolder), "{err}");
}

#[test]
fn a_stop_request_keeps_the_output_and_the_records_so_far() {
    let tmp = tempfile::tempdir().unwrap();
    let c = classifier(&tiny_model(tmp.path(), "good"));
    let data = tmp.path().join("data");
    labelled(&data);
    let out = tmp.path().join("results.csv");
    std::fs::write(&out, "earlier results\n").unwrap();
    let config = JobConfig { paths: vec![data], format: Format::Csv, output: Some(out.clone()), ..Default::default() };
    let (mut terminal, mut notes) = (Vec::new(), Vec::new());
    // SIGTERM already asked for: the job stops after its first record.
    let summary = Job::new(config).run(&c, &mut terminal, &mut notes, &AtomicUsize::new(15)).unwrap();
    assert_eq!(summary.outcome, Outcome::Stopped { signal: 15 });
    assert_eq!((summary.written, summary.exit_code()), (1, 143));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier results\n");
    let partial = std::fs::read_to_string(partial_path(&out)).unwrap();
    assert_eq!(partial.lines().count(), 2, "the header and one record: {partial}");
    let note = notes.last().unwrap();
    assert!(note.starts_with("terminated: ") && note.contains("the 1 of 10 results so far are in"), "{note}");
}

#[test]
fn no_images_is_an_error_after_the_path_errors_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let c = classifier(&tiny_model(tmp.path(), "good"));
    let missing = tmp.path().join("missing.png");
    let config = JobConfig { paths: vec![missing], ..Default::default() };
    let mut terminal = Vec::new();
    let err = Job::new(config).run(&c, &mut terminal, &mut Vec::new(), &AtomicUsize::new(0)).unwrap_err();
    assert!(err.to_string().starts_with("no images found in "), "{err}");

    // Files that all fail: no rate of nothing in the summary.
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let config = JobConfig { paths: vec![bad], ..Default::default() };
    let summary = Job::new(config).run(&c, &mut Vec::new(), &mut Vec::new(), &AtomicUsize::new(0)).unwrap();
    let line = summary.line(&c, 0.5);
    assert!(line.starts_with("0 images classified, 1 failed (0.50 s in all), "), "{line}");
    assert!(!line.contains("images/s"), "{line}");
    assert!(String::from_utf8_lossy(&terminal).contains("missing.png: no such file or folder"));
}
