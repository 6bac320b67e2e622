//! `train::dist` across real processes: two ranks on loopback, each a copy of this test binary
//! re-run on its `child` test with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set as a
//! launcher would, and the scenario to play in DIST_PG_SCENARIO. The children check their own
//! results (a failed assertion is a failed exit); the parent checks that both exited cleanly in
//! time, and kills them past a deadline, so no test can hang.
//!
//! With gloo not compiled in (no libgloo-dev when train was built), the two-process tests say so
//! and pass without running.

use std::process::Command;
use std::time::{Duration, Instant};

use tch::{nn, nn::Module, Device, Kind, Tensor};
use test_support::{free_port, launcher_env};
use train::dist::{Backend, DistError, Env, GroupConfig, ProcessGroup, ReduceOp, Reducer, ReducerOptions, StoreRole};

const SCENARIO: &str = "DIST_PG_SCENARIO";
/// The group's timeout in the children: the bound on every failure below.
const TIMEOUT: Duration = Duration::from_secs(5);
/// What the parent allows a pair of children, start-up included, before killing them.
const DEADLINE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Parent side.

fn gloo_or_skip() -> bool {
    if Backend::Gloo.is_compiled_in() {
        return true;
    }
    eprintln!("SKIPPED: train was built without the gloo backend (install libgloo-dev; scripts/setup.sh)");
    false
}

struct Output {
    code: Option<i32>,
    text: String,
}

/// Runs `scenario` on two ranks and returns each rank's exit code and output.
fn run_pair(scenario: &str) -> [Output; 2] {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let commands = (0..2)
        .map(|rank| {
            let mut cmd = Command::new(&exe);
            cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"]).env(SCENARIO, scenario);
            launcher_env(&mut cmd, rank, 2, port);
            cmd
        })
        .collect();
    run_all(commands, scenario)
}

/// Runs the commands together; kills them all past [`DEADLINE`].
fn run_all<const N: usize>(commands: Vec<Command>, what: &str) -> [Output; N] {
    assert_eq!(commands.len(), N, "{what}");
    let mut results = test_support::run_all(commands, DEADLINE).into_iter();
    [(); N].map(|_| results.next().map(|(code, text)| Output { code, text }).expect("one result per command"))
}

fn assert_both_ok(scenario: &str) {
    let outs = run_pair(scenario);
    for (rank, out) in outs.iter().enumerate() {
        // Shown with --nocapture, or when the test fails.
        println!("--- {scenario}, rank {rank}:\n{}", out.text);
        assert_eq!(out.code, Some(0), "{scenario}: rank {rank} failed:\n{}", out.text);
        assert!(out.text.contains(&format!("rank {rank}: {scenario} ok")), "{scenario}: rank {rank}:\n{}", out.text);
    }
}

#[test]
fn all_reduce_sums_and_averages_on_both_ranks() {
    if gloo_or_skip() {
        assert_both_ok("all_reduce");
    }
}

#[test]
fn broadcast_gives_every_rank_the_roots_tensors() {
    if gloo_or_skip() {
        assert_both_ok("broadcast");
    }
}

#[test]
fn a_rank_that_exits_makes_the_others_collective_fail_in_time() {
    if gloo_or_skip() {
        assert_both_ok("peer_exits");
    }
}

#[test]
fn a_stalled_rank_makes_the_others_collective_time_out() {
    if gloo_or_skip() {
        assert_both_ok("peer_stalls");
    }
}

#[test]
fn reducer_leaves_the_average_gradient_on_both_ranks() {
    if gloo_or_skip() {
        assert_both_ok("reducer");
    }
}

#[test]
fn reducer_with_gradients_as_bucket_views() {
    if gloo_or_skip() {
        assert_both_ok("reducer_view");
    }
}

#[test]
fn reducer_backward_fails_when_a_peer_is_gone() {
    if gloo_or_skip() {
        assert_both_ok("reducer_peer_exits");
    }
}

/// Launched by torchrun (`--no-python`): the ranks read torchrun's environment, connect to the
/// store its agent hosts (TORCHELASTIC_USE_AGENT_STORE) under the attempt's prefix, and train
/// with the Reducer.
#[test]
fn torchrun_launches_the_ranks_with_its_agent_store() {
    if !gloo_or_skip() {
        return;
    }
    let python = test_support::repo_root().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("SKIPPED: no venv (scripts/setup.sh) for torchrun");
        return;
    }
    let mut torchrun = Command::new(python);
    torchrun
        .args(["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"])
        .arg(format!("--master-port={}", free_port()))
        .arg("--no-python")
        .arg(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, "reducer")
        .env("GLOO_SOCKET_IFNAME", "lo")
        .env("PYTHONUNBUFFERED", "1")
        .env("OMP_NUM_THREADS", "1");
    for var in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"] {
        torchrun.env_remove(var);
    }
    let [out] = run_all(vec![torchrun], "torchrun");
    assert_eq!(out.code, Some(0), "torchrun failed:\n{}", out.text);
    for rank in 0..2 {
        assert!(out.text.contains(&format!("rank {rank}: reducer ok")), "rank {rank}:\n{}", out.text);
    }
}

/// One process, world size 1: the group works alone, and bad arguments are typed errors that
/// name the rank and the operation.
#[test]
fn single_rank_group_and_argument_errors() {
    if !gloo_or_skip() {
        return;
    }
    let config = GroupConfig {
        backend: Backend::Gloo,
        rank: 0,
        world_size: 1,
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        store: StoreRole::Host,
        store_prefix: Some("/worker/attempt_0".into()),
        timeout: TIMEOUT,
        device_index: 0,
    };
    let pg = ProcessGroup::new(&config).unwrap();
    assert_eq!((pg.rank(), pg.world_size(), pg.backend()), (0, 1, Backend::Gloo));
    let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    pg.all_reduce(std::slice::from_ref(&t), ReduceOp::Avg).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [1.0, 2.0, 3.0]);
    assert_eq!(pg.all_gather_i64(&[7, 8]).unwrap(), vec![vec![7, 8]]);
    pg.barrier().unwrap();

    let ints = Tensor::from_slice(&[1i64, 2]);
    let err = pg.all_reduce(&[ints], ReduceOp::Avg).unwrap_err();
    assert!(matches!(err, DistError::Invalid { rank: 0, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("rank 0: all_reduce: invalid argument"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");

    let err = pg.broadcast(std::slice::from_ref(&t), 3).unwrap_err();
    assert!(matches!(err, DistError::Invalid { .. }), "{err:?}");
    let param = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    let err = pg.reducer(&[param], &ReducerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("requires grad"), "{err}");

    if !(Backend::Nccl.is_compiled_in() && tch::Cuda::is_available()) {
        let nccl = GroupConfig { backend: Backend::Nccl, master_port: free_port(), ..config.clone() };
        let err = ProcessGroup::new(&nccl).unwrap_err();
        assert!(matches!(err, DistError::Unavailable { rank: 0, .. }), "{err:?}");
        assert!(err.to_string().contains("nccl"), "{err}");
    }
}

/// A backend left out of this build (its headers were missing) is a typed error, not a crash.
#[test]
fn a_backend_left_out_of_the_build_is_a_typed_error() {
    for backend in [Backend::Gloo, Backend::Nccl] {
        if backend.is_compiled_in() {
            continue;
        }
        let config = GroupConfig {
            backend,
            rank: 0,
            world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: free_port(),
            store: StoreRole::Host,
            store_prefix: None,
            timeout: TIMEOUT,
            device_index: 0,
        };
        let err = ProcessGroup::new(&config).unwrap_err();
        assert!(matches!(err, DistError::Unavailable { rank: 0, .. }), "{err:?}");
        assert!(err.to_string().contains("not compiled into this build"), "{err}");
    }
}

/// A rank whose store never comes up: joining fails with a timeout, not a hang. (In a child
/// process, whose output is captured: libtorch logs each failed connection attempt.)
#[test]
fn joining_without_a_store_times_out() {
    if !gloo_or_skip() {
        return;
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, "no_store")
        .env("MASTER_PORT", free_port().to_string());
    let [out] = run_all(vec![cmd], "no_store");
    assert_eq!(out.code, Some(0), "{}", out.text);
    assert!(out.text.contains("rank 1: no_store ok"), "{}", out.text);
}

// ---------------------------------------------------------------------------------------------
// Child side.

/// The entry point of the two ranks; a no-op in the ordinary test run.
#[test]
fn child() {
    let Ok(scenario) = std::env::var(SCENARIO) else { return };
    if scenario == "no_store" {
        return no_store();
    }
    let env = Env::from_env().unwrap().expect("RANK and WORLD_SIZE are set");
    let pg = ProcessGroup::new(&env.group_config(Backend::Gloo, TIMEOUT)).unwrap();
    let rank = pg.rank();
    match scenario.as_str() {
        "all_reduce" => all_reduce(&pg),
        "broadcast" => broadcast(&pg),
        "peer_exits" => peer_exits(&pg),
        "peer_stalls" => peer_stalls(&pg),
        "reducer" => reducer(&pg, false),
        "reducer_view" => reducer(&pg, true),
        "reducer_peer_exits" => reducer_peer_exits(&pg),
        other => panic!("unknown scenario {other}"),
    }
    println!("rank {rank}: {scenario} ok");
}

fn values<T: tch::kind::Element>(t: &Tensor) -> Vec<T> {
    let flat = t.flatten(0, -1);
    let mut out = vec![T::ZERO; flat.numel()];
    let n = out.len();
    flat.copy_data(&mut out, n);
    out
}

fn all_reduce(pg: &ProcessGroup) {
    let r = pg.rank() as f64 + 1.0; // 1 on rank 0, 2 on rank 1: sum 3, average 1.5
    let make = || {
        vec![
            Tensor::full([3], r, (Kind::Float, Device::Cpu)),
            Tensor::arange(5, (Kind::Double, Device::Cpu)) * r,
            // Not contiguous: reduced through its bucket's flat buffer, written back.
            (Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]) * r).transpose(0, 1),
            Tensor::full([2, 2], r, (Kind::Float, Device::Cpu)),
        ]
    };
    // Buckets of 8 bytes: nearly one per tensor; then all in one bucket per dtype.
    for bucket in [8, 1 << 20] {
        let ts = make();
        pg.all_reduce_bucketed(&ts, ReduceOp::Sum, bucket).unwrap();
        assert_eq!(values::<f32>(&ts[0]), [3.0; 3]);
        assert_eq!(values::<f64>(&ts[1]), [0.0, 3.0, 6.0, 9.0, 12.0]);
        assert_eq!(values::<f32>(&ts[2]), [0.0, 9.0, 3.0, 12.0, 6.0, 15.0]);
        assert_eq!(ts[2].size(), [3, 2]);
        assert_eq!(values::<f32>(&ts[3]), [3.0; 4]);

        let ts = make();
        pg.all_reduce_bucketed(&ts, ReduceOp::Avg, bucket).unwrap();
        assert_eq!(values::<f32>(&ts[0]), [1.5; 3]);
        assert_eq!(values::<f64>(&ts[1]), [0.0, 1.5, 3.0, 4.5, 6.0]);
        assert_eq!(values::<f32>(&ts[2]), [0.0, 4.5, 1.5, 6.0, 3.0, 7.5]);
        assert_eq!(values::<f32>(&ts[3]), [1.5; 4]);
    }
    let counts = Tensor::from_slice(&[pg.rank() as i64 + 1, 10]);
    pg.all_reduce(std::slice::from_ref(&counts), ReduceOp::Sum).unwrap();
    assert_eq!(values::<i64>(&counts), [3, 20]);
    pg.all_reduce(&[], ReduceOp::Sum).unwrap();
    pg.barrier().unwrap();
}

fn broadcast(pg: &ProcessGroup) {
    tch::manual_seed(100 + pg.rank() as i64);
    let ts = [
        Tensor::randn([4, 3], (Kind::Float, Device::Cpu)),
        Tensor::randn([7], (Kind::Double, Device::Cpu)),
        Tensor::randint(1000, [5], (Kind::Int64, Device::Cpu)),
    ];
    let mine = values::<f64>(&ts[0].to_kind(Kind::Double));
    let gathered = pg.all_gather_f64(&mine).unwrap();
    assert_ne!(gathered[0], gathered[1], "the ranks start from different tensors");
    // Small buckets: several collectives.
    pg.broadcast_bucketed(&ts, 0, 16).unwrap();
    let flat: Vec<f64> = ts.iter().flat_map(|t| values::<f64>(&t.to_kind(Kind::Double))).collect();
    let gathered = pg.all_gather_f64(&flat).unwrap();
    assert_eq!(gathered[0], gathered[1], "rank 1 holds rank 0's tensors");
    if pg.rank() == 0 {
        assert_eq!(values::<f64>(&ts[0].to_kind(Kind::Double)), mine, "the root's tensors are unchanged");
    }
    // And from the other root.
    let t = Tensor::from_slice(&[pg.rank() as f32; 3]);
    pg.broadcast(std::slice::from_ref(&t), 1).unwrap();
    assert_eq!(values::<f32>(&t), [1.0; 3]);
    let ids = pg.all_gather_i64(&[pg.rank() as i64, 42]).unwrap();
    assert_eq!(ids, vec![vec![0, 42], vec![1, 42]]);
    let f = pg.all_gather_f32(&[pg.rank() as f32 * 0.5]).unwrap();
    assert_eq!(f, vec![vec![0.0], vec![0.5]]);
    pg.barrier().unwrap();
}

/// Rank 1 leaves right after joining; rank 0's next collective fails, in time, saying so.
fn peer_exits(pg: &ProcessGroup) {
    if pg.rank() == 1 {
        println!("rank 1: peer_exits ok");
        std::process::exit(0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Tensor::ones([1000], (Kind::Float, Device::Cpu));
    let start = Instant::now();
    let err = pg.all_reduce(&[t], ReduceOp::Sum).unwrap_err();
    let took = start.elapsed();
    println!("rank 0: after {took:?}: {err}");
    assert!(took < TIMEOUT + Duration::from_secs(1), "{took:?}");
    assert!(matches!(err, DistError::Collective { rank: 0, .. } | DistError::Timeout { rank: 0, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("rank 0: all_reduce"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

/// Rank 1 stays alive but never joins the collective; rank 0's times out after TIMEOUT.
fn peer_stalls(pg: &ProcessGroup) {
    if pg.rank() == 1 {
        std::thread::sleep(TIMEOUT + Duration::from_secs(2));
        return;
    }
    let t = Tensor::ones([8], (Kind::Float, Device::Cpu));
    let start = Instant::now();
    let err = pg.all_reduce(&[t], ReduceOp::Sum).unwrap_err();
    let took = start.elapsed();
    println!("rank 0: after {took:?}: {err}");
    assert!(matches!(err, DistError::Timeout { rank: 0, .. }), "{err:?}");
    assert!(took >= TIMEOUT - Duration::from_millis(200), "{took:?}");
    assert!(took < TIMEOUT + Duration::from_secs(2), "{took:?}");
    assert!(err.to_string().starts_with("rank 0: all_reduce timed out"), "{err}");
}

/// A small MLP on a VarStore, its parameters made equal on both ranks by a broadcast.
fn model(pg: &ProcessGroup) -> (nn::VarStore, nn::Sequential) {
    tch::manual_seed(7 + pg.rank() as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq().add(nn::linear(&root / "fc1", 6, 16, Default::default())).add_fn(|x| x.relu()).add(nn::linear(
        &root / "fc2",
        16,
        3,
        Default::default(),
    ));
    pg.broadcast(&vs.trainable_variables(), 0).unwrap();
    (vs, net)
}

fn batch(rank: usize, step: usize) -> (Tensor, Tensor) {
    tch::manual_seed(1000 + 10 * step as i64 + rank as i64);
    let x = Tensor::randn([5 + rank as i64, 6], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([5 + rank as i64, 3], (Kind::Float, Device::Cpu));
    (x, y)
}

/// Three steps: the gradients the Reducer leaves on each rank equal the average, over ranks, of
/// the gradients each rank computes alone (on a copy of the parameters the Reducer does not
/// hook); the buckets are rebuilt before the second step, and SGD keeps the replicas identical.
fn reducer(pg: &ProcessGroup, gradient_as_bucket_view: bool) {
    let rank = pg.rank();
    let (vs, net) = model(pg);
    // By name, in a fixed order: fc1.bias, fc1.weight, fc2.bias, fc2.weight.
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let params: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
    // Tiny buckets: the 4 parameters end up in several buckets once rebuilt.
    let options = ReducerOptions {
        bucket_bytes_cap: 256,
        first_bucket_bytes_cap: 64,
        gradient_as_bucket_view,
        ..Default::default()
    };
    let mut reducer = Reducer::new(pg, &params, &options).unwrap();
    for step in 0..3 {
        let (x, y) = batch(rank, step);

        // The local gradient, on detached copies of the parameters.
        let copies: Vec<Tensor> = params.iter().map(|p| p.detach().copy().set_requires_grad(true)).collect();
        let h = (x.matmul(&copies[1].tr()) + &copies[0]).relu();
        let out = h.matmul(&copies[3].tr()) + &copies[2];
        out.mse_loss(&y, tch::Reduction::Mean).backward();
        let local: Vec<f64> = copies.iter().flat_map(|c| values::<f64>(&c.grad().to_kind(Kind::Double))).collect();
        let all = pg.all_gather_f64(&local).unwrap();
        let expected: Vec<f64> = (0..local.len()).map(|i| (all[0][i] + all[1][i]) / 2.0).collect();

        // The same step through the Reducer.
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let loss = net.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        let rebuilt = reducer.prepare_for_backward(std::slice::from_ref(&loss)).unwrap();
        assert_eq!(rebuilt, step == 1, "buckets are rebuilt once, before the second step");
        reducer.backward(&loss).unwrap();
        let got: Vec<f64> = params.iter().flat_map(|p| values::<f64>(&p.grad().to_kind(Kind::Double))).collect();
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!((g - e).abs() <= 1e-6 * (1.0 + e.abs()), "step {step}, element {i}: {g} != average {e}");
        }
        assert!(all[0] != all[1], "the ranks' local gradients differ, so the check means something");

        tch::no_grad(|| {
            for p in &params {
                let mut p = p.shallow_clone();
                let _ = p.f_sub_(&(p.grad() * 0.1)).unwrap();
            }
        });
    }
    let flat: Vec<f64> = params.iter().flat_map(|p| values::<f64>(&p.to_kind(Kind::Double))).collect();
    let all = pg.all_gather_f64(&flat).unwrap();
    assert_eq!(all[0], all[1], "the replicas stay identical");
    let t = reducer.timings();
    assert_eq!(t.backward_passes, 3, "{t:?}");
    assert!(t.allreduces >= 3 && t.allreduce > Duration::ZERO && t.exposed <= t.backward, "{t:?}");
    // The gradients move out, leaving none behind (zero_grad(set_to_none=True)).
    let grads = reducer.take_grads(&params).unwrap();
    assert_eq!(grads.len(), params.len());
    assert!(grads.iter().all(Tensor::defined) && params.iter().all(|p| !p.grad().defined()));
    drop(reducer);
    pg.barrier().unwrap();
}

/// Rank 1 leaves after the Reducer is set up; rank 0's backward returns an error in time.
fn reducer_peer_exits(pg: &ProcessGroup) {
    let (vs, net) = model(pg);
    let params = vs.trainable_variables();
    let mut reducer = Reducer::new(pg, &params, &ReducerOptions::default()).unwrap();
    if pg.rank() == 1 {
        println!("rank 1: reducer_peer_exits ok");
        std::process::exit(0);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (x, y) = batch(0, 0);
    let loss = net.forward(&x).mse_loss(&y, tch::Reduction::Mean);
    reducer.prepare_for_backward(std::slice::from_ref(&loss)).unwrap();
    let start = Instant::now();
    let err = reducer.backward(&loss).unwrap_err();
    let took = start.elapsed();
    println!("rank 0: backward failed after {took:?}: {err}");
    assert!(took < TIMEOUT + Duration::from_secs(1), "{took:?}");
    assert!(matches!(err, DistError::Collective { rank: 0, .. } | DistError::Timeout { rank: 0, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("rank 0: backward (gradient all-reduce)"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

/// Rank 1 of 2 whose store (rank 0) never comes up.
fn no_store() {
    let config = GroupConfig {
        backend: Backend::Gloo,
        rank: 1,
        world_size: 2,
        master_addr: "127.0.0.1".into(),
        master_port: std::env::var("MASTER_PORT").unwrap().parse().unwrap(),
        store: StoreRole::Client,
        store_prefix: None,
        timeout: Duration::from_secs(1),
        device_index: 0,
    };
    let start = Instant::now();
    let err = ProcessGroup::new(&config).unwrap_err();
    let took = start.elapsed();
    println!("rank 1: after {took:?}: {err}");
    // TCPStore's client retries once, after a delay, when its first attempt times out.
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(matches!(err, DistError::Timeout { rank: 1, .. } | DistError::Store { rank: 1, .. }), "{err:?}");
    assert!(err.to_string().starts_with("rank 1: init process group"), "{err}");
    println!("rank 1: no_store ok");
}
