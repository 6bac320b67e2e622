//! `best.pt` and `last.pt`.
//!
//! Both are `torch.save` zip archives. `best.pt` pickles a plain torchvision state dict, so
//! Python loads it with `model.load_state_dict(torch.load("best.pt"))`; `last.pt` pickles
//! `{"model": state dict, "optimizer": {...}, "optimizer_steps": n, "run_state": json}` for
//! `--resume`. Each also carries a `toolkit.json` record (architecture, classes, preprocessing)
//! that `torch.load` ignores and the exporter reads.

use std::collections::HashMap;
use std::path::Path;

use infer::PreprocessConfig;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{CheckpointError, WeightsError};
use crate::model::ResNet;
use crate::optim::Optimizer;
use crate::torch_file::{self, Obj};
use crate::weights::{from_tch, state_dict_of, to_tch};
use infer::atomic;

/// Name written into checkpoints and exported models.
pub const TOOLKIT_NAME: &str = "resnet-transfer-toolkit";
/// Version of the `toolkit.json` record.
pub const FORMAT_VERSION: u32 = 1;
const INFO_RECORD: &str = "toolkit.json";

/// What a checkpoint says about its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub format_version: u32,
    pub toolkit: String,
    pub toolkit_version: String,
    pub arch: String,
    /// Class names in index order.
    pub classes: Vec<String>,
    pub preprocess: PreprocessConfig,
    /// 1-based epoch the weights come from.
    pub epoch: usize,
    pub val_acc: Option<f64>,
}

impl ModelInfo {
    pub fn new(
        arch: &str,
        classes: Vec<String>,
        preprocess: PreprocessConfig,
        epoch: usize,
        val_acc: Option<f64>,
    ) -> Self {
        ModelInfo {
            format_version: FORMAT_VERSION,
            toolkit: TOOLKIT_NAME.to_string(),
            toolkit_version: env!("CARGO_PKG_VERSION").to_string(),
            arch: arch.to_string(),
            classes,
            preprocess,
            epoch,
            val_acc,
        }
    }
}

fn tensors_obj(named: &[(String, Tensor)]) -> Result<Obj, tch::TchError> {
    let entries =
        named.iter().map(|(k, t)| Ok((k.clone(), Obj::Tensor(from_tch(t)?)))).collect::<Result<_, tch::TchError>>()?;
    Ok(Obj::Dict { entries, ordered: true })
}

fn write(path: &Path, obj: &Obj, info: &ModelInfo) -> Result<(), CheckpointError> {
    let json = serde_json::to_vec_pretty(info).expect("ModelInfo serialises");
    atomic::write_with(path, |w| {
        // The zip writer needs to seek; assemble in memory, then write once.
        let mut buf = std::io::Cursor::new(Vec::new());
        torch_file::write(&mut buf, obj, &[(INFO_RECORD, &json)]).map_err(std::io::Error::other)?;
        std::io::Write::write_all(w, buf.get_ref())
    })
    .map_err(|source| CheckpointError::Write { path: path.to_path_buf(), source })
}

/// Writes `best.pt`: the model's state dict plus its [`ModelInfo`].
pub fn save_best(path: &Path, model: &ResNet, info: &ModelInfo) -> Result<(), CheckpointError> {
    write(path, &tensors_obj(&model.state())?, info)
}

/// Writes `last.pt`: model, optimizer state and the run's state (JSON) for `--resume`.
pub fn save_last(
    path: &Path,
    model: &ResNet,
    optimizer: &Optimizer,
    info: &ModelInfo,
    run_state: &str,
) -> Result<(), CheckpointError> {
    save_last_with_ema(path, model, optimizer, None, info, run_state)
}

/// [`save_last`], with the moving average of the weights (`--ema`) and its update count.
pub fn save_last_with_ema(
    path: &Path,
    model: &ResNet,
    optimizer: &Optimizer,
    ema: Option<&crate::ema::Ema>,
    info: &ModelInfo,
    run_state: &str,
) -> Result<(), CheckpointError> {
    let (opt_state, steps) = optimizer.state();
    let mut entries = vec![
        ("model".into(), tensors_obj(&model.state())?),
        ("optimizer".into(), tensors_obj(&opt_state)?),
        ("optimizer_steps".into(), Obj::Int(steps)),
        ("run_state".into(), Obj::Str(run_state.to_string())),
    ];
    if let Some(ema) = ema {
        entries.push(("ema".into(), tensors_obj(&ema.state())?));
        entries.push(("ema_updates".into(), Obj::Int(ema.updates() as i64)));
    }
    write(path, &Obj::Dict { entries, ordered: false }, info)
}

/// Reads the [`ModelInfo`] record of a checkpoint written by this toolkit.
pub fn read_info(path: &Path) -> Result<ModelInfo, CheckpointError> {
    let invalid = |reason: String| CheckpointError::Invalid { path: path.to_path_buf(), reason };
    let bytes = torch_file::read_extra(path, INFO_RECORD)
        .map_err(|source| CheckpointError::File { path: path.to_path_buf(), source })?
        .ok_or_else(|| invalid(format!("no {INFO_RECORD} record")))?;
    let info: ModelInfo = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{INFO_RECORD}: {e}")))?;
    if info.format_version > FORMAT_VERSION {
        return Err(invalid(format!(
            "format version {} is newer than this toolkit's {FORMAT_VERSION}",
            info.format_version
        )));
    }
    Ok(info)
}

/// The run state (JSON) of a `last.pt`, without turning its tensors into libtorch tensors.
pub fn read_run_state(path: &Path) -> Result<String, CheckpointError> {
    let obj = torch_file::load(path).map_err(|source| CheckpointError::File { path: path.to_path_buf(), source })?;
    obj.get("run_state").and_then(Obj::as_str).map(str::to_string).ok_or_else(|| CheckpointError::Invalid {
        path: path.to_path_buf(),
        reason: "no run state; resume from last.pt, not best.pt".into(),
    })
}

/// Everything `--resume` needs from `last.pt`.
pub struct Resume {
    pub info: ModelInfo,
    pub model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
    pub optimizer_steps: i64,
    pub run_state: String,
    /// The moving average of the weights and its update count, when the run kept one.
    pub ema: Option<(HashMap<String, Tensor>, u64)>,
}

/// Reads `last.pt`.
pub fn load_last(path: &Path) -> Result<Resume, CheckpointError> {
    let invalid = |reason: &str| CheckpointError::Invalid { path: path.to_path_buf(), reason: reason.to_string() };
    let info = read_info(path)?;
    let obj = torch_file::load(path).map_err(|source| CheckpointError::File { path: path.to_path_buf(), source })?;
    let to_map = |o: &Obj| -> Result<HashMap<String, Tensor>, CheckpointError> {
        match o {
            Obj::Dict { entries, .. } if entries.is_empty() => Ok(HashMap::new()),
            _ => state_dict_of(o)
                .ok_or_else(|| invalid("tensors expected"))?
                .into_iter()
                .map(|(k, t)| Ok((k, to_tch(t).map_err(WeightsError::from)?)))
                .collect(),
        }
    };
    let model = to_map(obj.get("model").ok_or_else(|| invalid("no 'model' entry; resume from last.pt, not best.pt"))?)?;
    let optimizer = to_map(obj.get("optimizer").ok_or_else(|| invalid("no 'optimizer' entry"))?)?;
    let optimizer_steps =
        obj.get("optimizer_steps").and_then(Obj::as_int).ok_or_else(|| invalid("no optimizer step count"))?;
    let run_state = obj.get("run_state").and_then(Obj::as_str).ok_or_else(|| invalid("no run state"))?.to_string();
    let ema = match (obj.get("ema"), obj.get("ema_updates").and_then(Obj::as_int)) {
        (Some(o), Some(updates)) => Some((to_map(o)?, updates.max(0) as u64)),
        _ => None,
    };
    Ok(Resume { info, model, optimizer, optimizer_steps, run_state, ema })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::by_name;
    use crate::optim::OptimConfig;
    use tch::{Device, Kind};

    #[test]
    fn last_pt_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let model = ResNet::new(by_name("resnet18").unwrap(), 3, Device::Cpu);
        let cfg = OptimConfig { lr: 0.1, epochs: 2, ..Default::default() };
        let mut opt = Optimizer::new(cfg.clone(), model.trainable(true));
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let loss = model.forward(&x, true).sum(Kind::Float);
        let grads = opt.backward(&loss).unwrap();
        opt.step(grads, 0.1).unwrap();

        let info = ModelInfo::new(
            "resnet18",
            vec!["x".into(), "y".into(), "z".into()],
            PreprocessConfig::default(),
            4,
            Some(0.75),
        );
        let path = dir.path().join("last.pt");
        save_last(&path, &model, &opt, &info, "{\"k\":1}").unwrap();
        let back = load_last(&path).unwrap();
        assert_eq!(back.info, info);
        assert_eq!(back.run_state, "{\"k\":1}");
        assert_eq!(back.optimizer_steps, 1);
        for (name, t) in model.state() {
            assert!(back.model[&name].equal(&t), "{name}");
        }
        let (state, _) = opt.state();
        assert_eq!(state.len(), 2); // fc.weight and fc.bias momentum buffers
        for (name, t) in &state {
            assert!(back.optimizer[name].equal(t), "{name}");
        }
        let mut restored = Optimizer::new(cfg, model.trainable(true));
        restored.load_state(&back.optimizer, back.optimizer_steps).unwrap();
        assert_eq!(restored.state().1, 1);

        assert!(back.ema.is_none());

        // With --ema, the average and its update count come back too.
        let mut ema = crate::ema::Ema::new(crate::ema::EmaSettings::default(), &model).unwrap();
        let _ = tch::no_grad(|| model.trainable(false)[0].1.shallow_clone().fill_(0.5));
        ema.update(&model, 1).unwrap();
        ema.update(&model, 2).unwrap();
        save_last_with_ema(&path, &model, &opt, Some(&ema), &info, "{}").unwrap();
        let (state, updates) = load_last(&path).unwrap().ema.unwrap();
        assert_eq!(updates, 2);
        for (name, t) in ema.state() {
            assert!(state[&name].equal(&t), "{name}");
        }

        // A best.pt is not a resumable checkpoint, and says so.
        let best = dir.path().join("best.pt");
        save_best(&best, &model, &info).unwrap();
        let err = load_last(&best).err().unwrap().to_string();
        assert!(err.contains("resume from last.pt"), "{err}");
        // A file without the record is not ours.
        std::fs::write(dir.path().join("x.pt"), b"PK\x03\x04").unwrap();
        assert!(read_info(&dir.path().join("x.pt")).is_err());
    }
}
