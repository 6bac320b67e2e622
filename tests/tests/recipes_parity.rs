//! Training-recipe blocks against PyTorch: the loss (`CrossEntropyLoss` with label smoothing and
//! class weights, hard and probability targets) and the learning-rate schedules (`OneCycleLR`),
//! with reference values from the venv's torch.

use tch::{Device, Kind, Tensor};
use toolkit_tests::run_python;
use train::loss::{ClassWeights, CrossEntropy, LossSettings};
use train::schedule::{Anneal, OneCycle, OneCycleSettings};

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn cross_entropy_matches_torch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("loss.json");
    run_python("loss_reference.py", &[out.as_os_str()]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let (n, c) = (r["n"].as_i64().unwrap(), r["c"].as_i64().unwrap());
    let logits = Tensor::from_slice(&floats(&r["logits"])).view([n, c]);
    let labels: Vec<i64> = r["labels"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let labels = Tensor::from_slice(&labels);
    let soft = Tensor::from_slice(&floats(&r["soft"])).view([n, c]);
    let mixed = Tensor::from_slice(&floats(&r["mixed"])).view([n, c]);
    let counts: Vec<usize> = r["counts"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    // `--class-weights auto` gives the script's weights.
    let auto = ClassWeights::Auto.resolve(&counts).unwrap().unwrap();
    for (a, b) in auto.iter().zip(r["weights"].as_array().unwrap()) {
        assert!((a - b.as_f64().unwrap()).abs() < 1e-12);
    }
    let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
    for case in r["cases"].as_array().unwrap() {
        let eps = case["eps"].as_f64().unwrap();
        let weighted = case["weighted"].as_bool().unwrap();
        let kind = case["kind"].as_str().unwrap();
        let settings = LossSettings {
            label_smoothing: eps,
            class_weights: if weighted { ClassWeights::Auto } else { ClassWeights::None },
        };
        let ce: CrossEntropy = settings.build(&counts, Device::Cpu).unwrap();
        let x = logits.copy().set_requires_grad(true);
        let loss = match kind {
            "hard" => ce.hard(&x, &labels),
            "soft" => ce.soft(&x, &soft),
            _ => ce.soft(&x, &mixed),
        }
        .unwrap();
        let grad = Tensor::run_backward(&[&loss], &[&x], false, false).remove(0);
        let dl = (loss.double_value(&[]) - case["loss"].as_f64().unwrap()).abs();
        let theirs = Tensor::from_slice(&floats(&case["grad"])).view([n, c]);
        let dg = (grad - theirs).abs().max().to_kind(Kind::Double).double_value(&[]);
        assert!(dl <= 1e-6, "eps {eps} weighted {weighted} {kind}: loss differs by {dl}");
        assert!(dg <= 1e-6, "eps {eps} weighted {weighted} {kind}: gradient differs by {dg}");
        worst_loss = worst_loss.max(dl);
        worst_grad = worst_grad.max(dg);
    }
    println!("cross entropy: max |loss diff| {worst_loss:e}, max |grad diff| {worst_grad:e} over 30 cases");
}

#[test]
fn one_cycle_matches_torch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("schedule.json");
    run_python("schedule_reference.py", &[out.as_os_str()]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let mut worst = 0.0f64;
    for run in r.as_array().unwrap() {
        let c = &run["config"];
        let get = |k: &str, default: f64| c.get(k).and_then(|v| v.as_f64()).unwrap_or(default);
        let d = OneCycleSettings::default();
        let settings = OneCycleSettings {
            pct_start: get("pct_start", d.pct_start),
            anneal: if c.get("anneal_strategy").and_then(|v| v.as_str()) == Some("linear") {
                Anneal::Linear
            } else {
                Anneal::Cos
            },
            cycle_momentum: true,
            base_momentum: get("base_momentum", d.base_momentum),
            max_momentum: get("max_momentum", d.max_momentum),
            div_factor: get("div_factor", d.div_factor),
            final_div_factor: get("final_div_factor", d.final_div_factor),
            three_phase: c.get("three_phase").and_then(|v| v.as_bool()).unwrap_or(false),
        };
        let total = c["total_steps"].as_u64().unwrap() as usize;
        let o = OneCycle::new(settings, c["max_lr"].as_f64().unwrap(), total).unwrap();
        for (step, (lr, m)) in run["lr"].as_array().unwrap().iter().zip(run["momentum"].as_array().unwrap()).enumerate()
        {
            let (lr, m) = (lr.as_f64().unwrap(), m.as_f64().unwrap());
            let (ours_lr, ours_m) = o.at(step);
            let dl = (ours_lr - lr).abs() / lr.abs().max(1e-300);
            worst = worst.max(dl).max((ours_m - m).abs());
            assert!(dl <= 1e-12, "{c}: step {step} lr {ours_lr} vs torch {lr}");
            assert!((ours_m - m).abs() <= 1e-12, "{c}: step {step} momentum {ours_m} vs torch {m}");
        }
    }
    println!("OneCycleLR: worst relative lr / absolute momentum difference {worst:e}");
}
