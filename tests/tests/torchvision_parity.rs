//! The tch model against torchvision with the same weights: forward, training steps, and
//! `best.pt` read back by PyTorch. Weight files are made by the venv's torch.

use std::collections::HashMap;
use std::ffi::OsStr;

use tch::{Device, Kind, Tensor};
use toolkit_tests::{make_weights, max_abs_diff, model_inputs, read_f32, run_python, write_f32};
use train::arch::by_name;
use train::model::ResNet;
use train::optim::{OptimConfig, Optimizer, ScheduleKind};
use train::weights::read_state_dict;

fn load(arch: &str, classes: i64, path: &std::path::Path) -> ResNet {
    let model = ResNet::new(by_name(arch).unwrap(), classes, Device::Cpu);
    model.load_state(&read_state_dict(path).unwrap(), false).unwrap();
    model
}

fn logits(model: &ResNet, input: &[f32], n: i64) -> Vec<f32> {
    let x = Tensor::from_slice(input).view([n, 3, 224, 224]);
    let y = tch::no_grad(|| model.forward(&x, false));
    Vec::<f32>::try_from(y.flatten(0, -1)).unwrap()
}

fn torchvision(
    weights: &std::path::Path,
    input: &[f32],
    n: usize,
    arch: &str,
    classes: usize,
    extra: &[&str],
) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("in.f32"), dir.path().join("out.f32"));
    write_f32(&inp, input);
    let (classes, n) = (classes.to_string(), n.to_string());
    let mut args: Vec<&OsStr> = vec![weights.as_os_str(), inp.as_os_str(), out.as_os_str()];
    for a in ["--arch", arch, "--classes", &classes, "--batch", &n] {
        args.push(OsStr::new(a));
    }
    args.extend(extra.iter().map(OsStr::new));
    run_python("torchvision_forward.py", &args);
    read_f32(&out)
}

#[test]
fn eval_forward_matches_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let input = model_inputs(3);
    for (arch, classes) in [("resnet18", 5usize), ("resnet50", 3)] {
        let w = make_weights(
            dir.path(),
            &format!("{arch}.pth"),
            &["--arch", arch, "--classes", &classes.to_string(), "--seed", "3"],
        );
        let ours = logits(&load(arch, classes as i64, &w), &input, 3);
        let theirs = torchvision(&w, &input, 3, arch, classes, &[]);
        let diff = max_abs_diff(&ours, &theirs);
        println!("{arch}: max |logit diff| {diff:e}");
        assert!(diff <= 1e-4, "{arch}: logits differ by {diff}");
    }
}

#[test]
fn sgd_training_steps_match_torchvision() {
    let dir = tempfile::tempdir().unwrap();
    let w = make_weights(dir.path(), "r18.pth", &["--classes", "2", "--seed", "5"]);
    let input = model_inputs(4);
    let labels = [0i64, 1, 1, 0];
    // Three steps at the seed's learning rate, so that momentum takes part. The update is the
    // same arithmetic as PyTorch's (the results agree exactly here); the bound leaves room for
    // other kernels. Much larger rates amplify any rounding difference chaotically on a random
    // network, PyTorch against itself included.
    let steps = 3;

    let model = load("resnet18", 2, &w);
    let cfg = OptimConfig { schedule: ScheduleKind::Constant, epochs: 1, ..Default::default() };
    let mut opt = Optimizer::new(cfg, model.trainable(false));
    let x = Tensor::from_slice(&input).view([4, 3, 224, 224]);
    let y = Tensor::from_slice(&labels);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = model.forward(&x, true).cross_entropy_for_logits(&y);
        let grads = opt.backward(&loss).unwrap();
        opt.step(grads, 0.001).unwrap();
        losses.push(loss.double_value(&[]) as f32);
    }
    let state: HashMap<String, Tensor> = model.state().into_iter().collect();
    let mut ours = losses.clone();
    for k in ["fc.weight", "conv1.weight", "bn1.running_mean", "layer4.1.bn2.bias"] {
        ours.extend(Vec::<f32>::try_from(state[k].to_kind(Kind::Float).flatten(0, -1)).unwrap());
    }
    let theirs =
        torchvision(&w, &input, 4, "resnet18", 2, &["--train-steps", "3", "--labels", "0,1,1,0", "--lr", "0.001"]);
    println!("losses ours {:?} torchvision {:?}", &ours[..steps], &theirs[..steps]);
    let diff = max_abs_diff(&ours, &theirs);
    println!("max |diff| over losses and updated tensors: {diff:e}");
    assert!(diff <= 1e-4, "training diverges from torchvision by {diff}");
}

#[test]
fn best_pt_loads_in_pytorch_with_the_documented_line() {
    let dir = tempfile::tempdir().unwrap();
    let w = make_weights(dir.path(), "init.pth", &["--classes", "4", "--seed", "9"]);
    let model = load("resnet18", 4, &w);
    let info = train::checkpoint::ModelInfo::new(
        "resnet18",
        vec!["a".into(), "b".into(), "c".into(), "d".into()],
        Default::default(),
        1,
        Some(0.5),
    );
    let best = dir.path().join("best.pt");
    train::checkpoint::save_best(&best, &model, &info).unwrap();
    let input = model_inputs(2);
    let ours = logits(&model, &input, 2);
    // torchvision_forward.py loads with `model.load_state_dict(torch.load(path))`.
    let theirs = torchvision(&best, &input, 2, "resnet18", 4, &[]);
    assert!(max_abs_diff(&ours, &theirs) <= 1e-5);
    // And our reader gets back exactly what was written.
    let back = load("resnet18", 4, &best);
    assert_eq!(logits(&back, &input, 2), ours);
    assert_eq!(train::checkpoint::read_info(&best).unwrap(), info);
}
