//! Embedding `infer` in a few lines:
//! `cargo run --release -p infer --example classify -- models/model.onnx image.jpg [more images...]`

use infer::{Classifier, ExecutionProvider};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: classify MODEL.onnx IMAGE...")?;
    let classifier = Classifier::builder(model).execution_provider(ExecutionProvider::Auto).top_k(2).build()?;
    eprintln!("{} classes, on {}", classifier.metadata().classes.len(), classifier.provider());
    for r in classifier.classify_files(args.map(Into::into).collect()) {
        match &r.result {
            Ok(p) => println!("{}: {} ({:.1}%)", r.path.display(), p.label, 100.0 * p.confidence),
            Err(e) => eprintln!("{}: {e}", r.path.display()),
        }
    }
    Ok(())
}
