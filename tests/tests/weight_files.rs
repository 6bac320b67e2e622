//! Loading torchvision-format weights: the three file formats, and clear errors for files that
//! do not fit the model.

use tch::Device;
use toolkit_tests::make_weights;
use train::arch::by_name;
use train::error::WeightsError;
use train::model::ResNet;
use train::weights::read_state_dict;

#[test]
fn zip_legacy_and_safetensors_files_load_identically() {
    let dir = tempfile::tempdir().unwrap();
    let seed = ["--classes", "3", "--seed", "11"];
    let zip = make_weights(dir.path(), "w.pth", &[&seed[..], &["--format", "zip"]].concat());
    let legacy = make_weights(dir.path(), "w_legacy.pth", &[&seed[..], &["--format", "legacy"]].concat());
    let st = make_weights(dir.path(), "w.safetensors", &[&seed[..], &["--format", "safetensors"]].concat());
    let a = read_state_dict(&zip).unwrap();
    let b = read_state_dict(&legacy).unwrap();
    let c = read_state_dict(&st).unwrap();
    assert_eq!(a.len(), 122);
    for (k, t) in &a {
        assert!(t.equal(&b[k]), "{k} differs in the legacy file");
        assert!(t.equal(&c[k]), "{k} differs in the safetensors file");
    }
    let model = ResNet::new(by_name("resnet18").unwrap(), 3, Device::Cpu);
    assert!(model.load_state(&a, false).unwrap().is_empty());
}

#[test]
fn head_of_another_class_count_is_replaced_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let w = make_weights(dir.path(), "imagenet_like.pth", &["--classes", "1000"]);
    let sd = read_state_dict(&w).unwrap();
    let model = ResNet::new(by_name("resnet18").unwrap(), 2, Device::Cpu);
    assert_eq!(model.load_state(&sd, true).unwrap(), ["fc.weight", "fc.bias"]);
    let err = model.load_state(&sd, false).unwrap_err().to_string();
    assert!(err.contains("mis-shaped keys: fc.weight (file [1000, 512], model [2, 512])"), "{err}");
}

#[test]
fn mismatched_files_name_the_offending_keys() {
    let dir = tempfile::tempdir().unwrap();
    let model = ResNet::new(by_name("resnet18").unwrap(), 1000, Device::Cpu);
    let cases = [
        ("missing", "missing keys: layer2.0.conv1.weight"),
        ("unexpected", "unexpected keys: layer5.0.conv1.weight"),
        ("shape", "mis-shaped keys: layer3.1.bn2.weight (file [7], model [256])"),
    ];
    for (breakage, expected) in cases {
        let w = make_weights(dir.path(), &format!("{breakage}.pth"), &["--break", breakage]);
        let err = model.load_state(&read_state_dict(&w).unwrap(), true).unwrap_err();
        assert!(matches!(err, WeightsError::Mismatch { .. }));
        let msg = err.to_string();
        assert!(msg.contains(expected), "{breakage}: {msg}");
        assert!(!msg.contains('\n'));
    }
    // Another architecture's weights: named as missing/unexpected, not a crash.
    let w50 = make_weights(dir.path(), "r50.pth", &["--arch", "resnet50"]);
    let msg = model.load_state(&read_state_dict(&w50).unwrap(), true).unwrap_err().to_string();
    assert!(msg.contains("unexpected keys: layer1.0.bn3.bias"), "{msg}");
}

#[test]
fn unreadable_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    let msg = read_state_dict(&junk).unwrap_err().to_string();
    assert!(msg.starts_with(&junk.display().to_string()) && msg.contains("not a torch.save file"), "{msg}");

    let good = make_weights(dir.path(), "good.pth", &[]);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let msg = read_state_dict(&truncated).unwrap_err().to_string();
    assert!(msg.contains("truncated.pth") && !msg.contains('\n'), "{msg}");

    let st = dir.path().join("bad.safetensors");
    std::fs::write(&st, b"\x10\x00\x00\x00\x00\x00\x00\x00{oops").unwrap();
    let msg = read_state_dict(&st).unwrap_err().to_string();
    assert!(msg.contains("bad.safetensors") && !msg.contains('\n'), "{msg}");

    let missing = dir.path().join("nope.pth");
    assert!(read_state_dict(&missing).unwrap_err().to_string().contains("nope.pth"));
}
