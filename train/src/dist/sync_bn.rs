//! Synchronised batch norm (`torch.nn.SyncBatchNorm`'s training-mode forward and backward) as
//! an operation of a [`ProcessGroup`].
use std::ffi::c_char;
use std::ptr;
use std::time::Duration;

use tch::Tensor;

use super::error::{check, DistError, Op};
use super::ffi;
use super::group::ProcessGroup;

impl ProcessGroup {
    /// Batch norm in training mode over the batches of every rank at once: the per-channel sum,
    /// sum of squares and count are all-reduced (in double precision), the input normalised
    /// with the global mean and variance, and `running_mean`/`running_var` updated with the
    /// global mean and unbiased variance, as `torch.nn.SyncBatchNorm` does. It is an autograd
    /// operation whose backward all-reduces the two per-channel gradient sums, so that the
    /// input's gradient accounts for every rank's use of the shared statistics; the weight's
    /// and bias's gradients are this rank's, for DDP's reducer to average like any other.
    ///
    /// Collective, forward and backward alike: every rank calls it for the same layers in the
    /// same order. `input` is `[N, C, ...]` on the group's device.
    #[allow(clippy::too_many_arguments)]
    pub fn sync_batch_norm(
        &self,
        input: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor, DistError> {
        let opt = |t: Option<&Tensor>| t.map_or(ptr::null_mut(), ffi::tensor_ptr);
        let mut out: ffi::dist_tensor = ptr::null_mut();
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: a live group; the tensors are borrowed for the call (autograd keeps its own
        // references to what backward needs); out-pointers.
        let status = unsafe {
            ffi::dist_sync_batch_norm(
                self.raw(),
                ffi::tensor_ptr(input),
                opt(weight),
                opt(bias),
                opt(running_mean),
                opt(running_var),
                momentum,
                eps,
                &mut out,
                &mut err,
            )
        };
        check(status, err, self.rank(), Op::SyncBatchNorm)?;
        if out.is_null() {
            return Err(DistError::Internal {
                rank: self.rank(),
                op: Op::SyncBatchNorm,
                message: "the shim returned no tensor".into(),
            });
        }
        // SAFETY: a tensor the shim allocated for us, taken once.
        Ok(unsafe { ffi::take_tensor(out) })
    }

    /// Time [`ProcessGroup::sync_batch_norm`] has spent in its all-reduces so far, forward and
    /// backward (blocking: the computation waits for them).
    pub fn sync_batch_norm_time(&self) -> Duration {
        // SAFETY: a live group.
        Duration::from_secs_f64(unsafe { ffi::dist_pg_sync_bn_seconds(self.raw()) }.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use tch::{Device, Kind};

    use super::*;
    use crate::dist::{Backend, GroupConfig, StoreRole};

    fn one_rank_group() -> Option<ProcessGroup> {
        if !Backend::Gloo.is_compiled_in() {
            eprintln!("SKIPPED: gloo is not compiled in");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let config = GroupConfig {
            backend: Backend::Gloo,
            rank: 0,
            world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            store: StoreRole::Host,
            store_prefix: None,
            timeout: Duration::from_secs(10),
            device_index: 0,
        };
        Some(ProcessGroup::new(&config).unwrap())
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// On one rank, the synchronised statistics are the batch's own: output, running statistics
    /// and every gradient are libtorch's batch norm's (the backward's all-reduce included).
    #[test]
    fn one_rank_matches_libtorch_batch_norm() {
        let Some(pg) = one_rank_group() else { return };
        let opts = (Kind::Float, Device::Cpu);
        let x = (Tensor::randn([6, 4, 5, 3], opts) * 3.0 + 1.5).set_requires_grad(true);
        let w = (Tensor::rand([4], opts) + 0.5).set_requires_grad(true);
        let b = Tensor::randn([4], opts).set_requires_grad(true);
        let probe = Tensor::randn([6, 4, 5, 3], opts);
        let (rm1, rv1) = (Tensor::randn([4], opts), Tensor::rand([4], opts) + 1.0);
        let (rm2, rv2) = (rm1.copy(), rv1.copy());

        let native = x.batch_norm(Some(&w), Some(&b), Some(&rm1), Some(&rv1), true, 0.1, 1e-5, false);
        let g_native = Tensor::run_backward(&[(&native * &probe).sum(Kind::Float)], &[&x, &w, &b], false, false);
        let synced = pg.sync_batch_norm(&x, Some(&w), Some(&b), Some(&rm2), Some(&rv2), 0.1, 1e-5).unwrap();
        let g_synced = Tensor::run_backward(&[(&synced * &probe).sum(Kind::Float)], &[&x, &w, &b], false, false);

        assert!(max_diff(&native, &synced) < 1e-5, "output: {}", max_diff(&native, &synced));
        assert!(pg.sync_batch_norm_time() > Duration::ZERO, "forward and backward all-reduced");
        assert!(max_diff(&rm1, &rm2) < 1e-6, "running mean");
        assert!(max_diff(&rv1, &rv2) < 1e-5, "running var: {}", max_diff(&rv1, &rv2));
        for (name, a, b) in [("input", 0, 0), ("weight", 1, 1), ("bias", 2, 2)] {
            let d = max_diff(&g_native[a], &g_synced[b]);
            let scale = g_native[a].abs().max().double_value(&[]);
            assert!(d < 1e-4 * (1.0 + scale), "{name} gradient: {d} (scale {scale})");
        }
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let Some(pg) = one_rank_group() else { return };
        let x = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([5], (Kind::Float, Device::Cpu));
        let err = pg.sync_batch_norm(&x, Some(&w), None, None, None, 0.1, 1e-5).unwrap_err();
        assert!(matches!(err, DistError::Invalid { rank: 0, op: Op::SyncBatchNorm, .. }), "{err:?}");
        let one = Tensor::randn([1, 3], (Kind::Float, Device::Cpu));
        let err = pg.sync_batch_norm(&one, None, None, None, None, 0.1, 1e-5).unwrap_err();
        assert!(err.to_string().contains("more than 1"), "{err}");
    }
}
