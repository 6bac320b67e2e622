//! Data-parallel training with PyTorch's DistributedDataParallel semantics, on [`crate::dist`]:
//! the trainer's side of a job of several processes (ranks).
//!
//! - The ranks start identical: rank 0's weights and BatchNorm statistics are broadcast to the
//!   others ([`Ddp::sync_model`]), after `--resume` too.
//! - Each rank trains on its shard of every epoch ([`crate::shard::Shard::padded`]); DDP's
//!   reducer averages the gradients in buckets during backward; every rank then takes the same
//!   optimiser step. Without `--sync-bn`, rank 0's BatchNorm statistics are broadcast before each
//!   step ([`Ddp::sync_buffers`], DDP's `broadcast_buffers`); with it, BatchNorm normalises with
//!   the statistics of all ranks' batches ([`crate::model::ResNet::forward_synced`]).
//! - Validation is sharded without padding and its per-sample results gathered
//!   ([`Ddp::gather_evaluation`]), so every rank reports what one process would.
//! - Before each step the ranks agree on stop requests and on skipping a batch none of whose
//!   images loaded ([`Ddp::agree`]), so they always take the same steps.

use std::cell::Cell;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use crate::config::Hyper;
use crate::dataset::Fingerprint;
use crate::dist::{Backend, DistError, Env, ProcessGroup, ReduceOp, Reducer, ReducerOptions};
use crate::error::{ConfigError, TrainError};
use crate::model::ResNet;
use crate::shard::Shard;

/// `--dist-timeout`'s default, torch.distributed's: how long any collective may wait for the
/// other ranks (joining included) before the run fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// `--dist-backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum BackendChoice {
    /// NCCL when training on a GPU, gloo on the CPU.
    #[default]
    Auto,
    Nccl,
    Gloo,
}

impl BackendChoice {
    /// The backend for a rank training on `device`.
    pub fn resolve(self, device: Device) -> Backend {
        match self {
            BackendChoice::Auto if device.is_cuda() => Backend::Nccl,
            BackendChoice::Auto | BackendChoice::Gloo => Backend::Gloo,
            BackendChoice::Nccl => Backend::Nccl,
        }
    }
}

/// How to join a data-parallel job.
#[derive(Debug, Clone, PartialEq)]
pub struct DistConfig {
    /// The launcher's variables ([`Env::from_env`]).
    pub env: Env,
    pub backend: BackendChoice,
    /// Bounds joining and every collective: a dead or stalled rank stops the others after at
    /// most about this long.
    pub timeout: Duration,
}

impl DistConfig {
    pub fn new(env: Env) -> DistConfig {
        DistConfig { env, backend: BackendChoice::default(), timeout: DEFAULT_TIMEOUT }
    }
}

/// What the ranks agreed on before a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Agreed {
    /// Some rank has a stop request: finish the epoch, then stop.
    pub stop_after_epoch: bool,
    /// Some rank has a second stop request: stop now.
    pub stop_now: bool,
    /// Some rank has no image of this batch: every rank skips it.
    pub skip_batch: bool,
}

impl Agreed {
    /// As a [`crate::StopFlag`] level: 0 none, 1 stop after the epoch, 2 stop now.
    pub fn level(&self) -> usize {
        if self.stop_now {
            2
        } else {
            usize::from(self.stop_after_epoch)
        }
    }
}

/// Where a rank's training time went to communication, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommTimes {
    /// The reducer's gradient all-reduces, launch to completion, summed (mostly hidden by the
    /// backward computation).
    pub allreduce: Duration,
    /// The part of it backward waited for after computing its last gradient.
    pub allreduce_exposed: Duration,
    /// Wall time of the backward passes (computation and exposed all-reduce).
    pub backward: Duration,
    /// The small blocking collectives of each step: the agreement, rank 0's BatchNorm
    /// statistics (without `--sync-bn`).
    pub step_sync: Duration,
    /// Synchronised BatchNorm's all-reduces (with `--sync-bn`), which forward and backward wait for.
    pub sync_bn: Duration,
}

/// This process's membership of a data-parallel job.
#[derive(Debug)]
pub struct Ddp {
    group: ProcessGroup,
    /// Where the small tensors of the trainer's own collectives live (the group's device).
    device: Device,
    /// Time in the trainer's own per-step collectives.
    step_sync: Cell<Duration>,
}

/// A failed collective, with what the trainer was doing.
fn during(what: &'static str) -> impl Fn(DistError) -> TrainError {
    move |source| TrainError::Distributed { during: what, source }
}

impl Ddp {
    /// Joins the job's process group with the backend for `device` (checked against it):
    /// blocks until every rank has joined or the timeout passes.
    pub fn join(cfg: &DistConfig, device: Device) -> Result<Ddp, TrainError> {
        let backend = cfg.backend.resolve(device);
        match (backend, device.is_cuda()) {
            (Backend::Gloo, true) => return Err(ConfigError::DistBackend { backend, device: "a GPU" }.into()),
            (Backend::Nccl, false) => return Err(ConfigError::DistBackend { backend, device: "the CPU" }.into()),
            _ => {}
        }
        let mut config = cfg.env.group_config(backend, cfg.timeout);
        if let Device::Cuda(index) = device {
            config.device_index = index;
        }
        let group = ProcessGroup::new(&config).map_err(during("joining the process group"))?;
        Ok(Ddp { group, device, step_sync: Cell::new(Duration::ZERO) })
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    pub fn backend(&self) -> Backend {
        self.group.backend()
    }

    /// Rank 0: the one that writes files and reports.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    pub fn shard(&self) -> Shard {
        Shard { rank: self.rank(), world: self.world_size() }
    }

    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// Fails on every rank, naming the first rank that differs from rank 0, unless all run the
    /// same settings on the same data: otherwise they would take different numbers of steps and
    /// wait for each other until the timeout.
    pub fn check_same_run(
        &self,
        hyper: &Hyper,
        classes: &[String],
        train: usize,
        val: usize,
        data: &Fingerprint,
    ) -> Result<(), TrainError> {
        let settings = serde_json::to_string(hyper).unwrap_or_default() + "\n" + &classes.join("\n");
        let mine = [train as i64, val as i64, classes.len() as i64, digest(&settings), digest(&data.hash)];
        let all = self.group.all_gather_i64(&mine).map_err(during("comparing the ranks' settings and data"))?;
        let Some(rank) = (1..all.len()).find(|&r| all[r] != all[0]) else { return Ok(()) };
        let (ours, theirs) = (&all[0], &all[rank]);
        let what = if ours[..3] != theirs[..3] {
            format!(
                "rank {rank} sees {} training and {} validation images of {} classes, rank 0 {} and {} of {}",
                theirs[0], theirs[1], theirs[2], ours[0], ours[1], ours[2]
            )
        } else if ours[3] != theirs[3] {
            format!("rank {rank}'s settings or classes differ from rank 0's (give every rank the same arguments, and with --resume the same last.pt)")
        } else {
            format!("rank {rank}'s image files differ from rank 0's (other names or sizes)")
        };
        Err(ConfigError::RanksDiffer { what }.into())
    }

    /// Gives every rank rank 0's parameters and BatchNorm statistics, as DDP does when it wraps
    /// a model.
    pub fn sync_model(&self, model: &ResNet) -> Result<(), TrainError> {
        let all: Vec<Tensor> = model.entries().iter().map(|e| e.tensor.shallow_clone()).collect();
        self.group.broadcast(&all, 0).map_err(during("copying rank 0's weights to every rank"))
    }

    /// Gives every rank rank 0's BatchNorm statistics (DDP's `broadcast_buffers`, before each
    /// training forward).
    pub fn sync_buffers(&self, model: &ResNet) -> Result<(), TrainError> {
        let started = Instant::now();
        self.group.broadcast(&model.buffers(), 0).map_err(during("copying rank 0's BatchNorm statistics"))?;
        self.step_sync.set(self.step_sync.get() + started.elapsed());
        Ok(())
    }

    /// DDP's reducer over `params` (the optimiser's, in its order), with DDP's buckets.
    pub fn reducer(&self, params: &[Tensor]) -> Result<Reducer, TrainError> {
        // gradient_as_bucket_view stays off: the gradients are taken out of the parameters
        // after each backward and may live on as the optimiser's momentum, which a bucket view
        // would overwrite at the next step.
        self.group.reducer(params, &ReducerOptions::default()).map_err(during("creating the gradient reducer"))
    }

    /// Before a training step: what every rank's stop requests (`level`, see
    /// [`crate::StopFlag`]) and batch (`empty`: none of its images loaded) add up to.
    pub fn agree(&self, level: usize, empty: bool) -> Result<Agreed, TrainError> {
        let started = Instant::now();
        let flags = [i64::from(level >= 1), i64::from(level >= 2), i64::from(empty)];
        let t = Tensor::from_slice(&flags).to_device(self.device);
        self.group.all_reduce(std::slice::from_ref(&t), ReduceOp::Sum).map_err(during("agreeing on the next step"))?;
        let sums = Vec::<i64>::try_from(t.to_device(Device::Cpu)).map_err(TrainError::Torch)?;
        self.step_sync.set(self.step_sync.get() + started.elapsed());
        let any = |i: usize| sums.get(i).is_some_and(|&n| n > 0);
        Ok(Agreed { stop_after_epoch: any(0), stop_now: any(1), skip_batch: any(2) })
    }

    /// The sums over the ranks of `values`.
    pub fn sum(&self, values: &[f64], what: &'static str) -> Result<Vec<f64>, TrainError> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.group.all_reduce(std::slice::from_ref(&t), ReduceOp::Sum).map_err(during(what))?;
        Vec::<f64>::try_from(t.to_device(Device::Cpu)).map_err(TrainError::Torch)
    }

    /// Every rank's evaluation results, in sample order: each rank passes those of its shard
    /// ([`Shard::strided`]) of `samples` samples.
    pub fn gather_evaluation(&self, mine: &[Evaluated], samples: usize) -> Result<Vec<Evaluated>, TrainError> {
        const FIELDS: usize = 4;
        let cap = self.shard().strided_max_len(samples);
        let mut flat = vec![-1.0f64; cap * FIELDS];
        for (slot, e) in flat.chunks_mut(FIELDS).zip(mine) {
            slot.copy_from_slice(&[e.sample as f64, e.class as f64, f64::from(e.confidence), f64::from(e.loss)]);
        }
        let all = self.group.all_gather_f64(&flat).map_err(during("gathering the validation results"))?;
        let mut out: Vec<Evaluated> = all
            .iter()
            .flat_map(|rank| rank.chunks(FIELDS))
            .filter(|v| v[0] >= 0.0)
            .map(|v| Evaluated {
                sample: v[0] as usize,
                class: v[1] as usize,
                confidence: v[2] as f32,
                loss: v[3] as f32,
            })
            .collect();
        out.sort_by_key(|e| e.sample);
        Ok(out)
    }

    /// This rank's communication times: the reducer's (`reducer`) and the trainer's own.
    pub fn comm_times(&self, reducer: &Reducer) -> CommTimes {
        let t = reducer.timings();
        CommTimes {
            allreduce: t.allreduce,
            allreduce_exposed: t.exposed,
            backward: t.backward,
            step_sync: self.step_sync.get(),
            sync_bn: self.group.sync_batch_norm_time(),
        }
    }
}

/// One evaluated sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluated {
    /// Index into the evaluated sample list.
    pub sample: usize,
    pub class: usize,
    pub confidence: f32,
    pub loss: f32,
}

/// 63 bits of SHA-256, as an i64 to gather.
fn digest(text: &str) -> i64 {
    let h = Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&h[..8]);
    (u64::from_le_bytes(bytes) >> 1) as i64
}

/// The validation loss and accuracy of gathered results, as one process computes them.
pub fn evaluation_stats(results: &[Evaluated], labels: impl Fn(usize) -> usize) -> (f64, f64) {
    if results.is_empty() {
        return (f64::NAN, 0.0);
    }
    let n = results.len() as f64;
    let loss: f64 = results.iter().map(|e| f64::from(e.loss)).sum();
    let correct = results.iter().filter(|e| e.class == labels(e.sample)).count();
    (loss / n, correct as f64 / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_backend_follows_the_device() {
        assert_eq!(BackendChoice::Auto.resolve(Device::Cpu), Backend::Gloo);
        assert_eq!(BackendChoice::Auto.resolve(Device::Cuda(1)), Backend::Nccl);
        assert_eq!(BackendChoice::Gloo.resolve(Device::Cuda(0)), Backend::Gloo);
        assert_eq!(BackendChoice::Nccl.resolve(Device::Cpu), Backend::Nccl);
    }

    #[test]
    fn gathered_results_give_one_process_figures() {
        let e = |sample, class, loss| Evaluated { sample, class, confidence: 0.5, loss };
        let results = [e(0, 1, 0.5), e(1, 0, 1.5), e(2, 1, 1.0)];
        let (loss, acc) = evaluation_stats(&results, |s| [1, 1, 1][s]);
        assert!((loss - 1.0).abs() < 1e-12);
        assert!((acc - 2.0 / 3.0).abs() < 1e-12);
        assert!(evaluation_stats(&[], |_| 0).0.is_nan());
    }
}
