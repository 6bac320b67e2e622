//! The launcher's environment: the variables torch.distributed's `env://` reads, set by
//! `torchrun`, Kubeflow's PyTorchJob, or an `srun` script.
use std::time::Duration;

use super::error::DistError;
use super::group::{Backend, GroupConfig, StoreRole};

/// Where this process stands in a data-parallel job, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// RANK: this process's rank in the job.
    pub rank: usize,
    /// WORLD_SIZE: the number of processes.
    pub world_size: usize,
    /// LOCAL_RANK: its index on this machine, the GPU it uses (0 when unset: Kubeflow runs one
    /// process per pod and does not set it).
    pub local_rank: usize,
    /// MASTER_ADDR: the host of the store.
    pub master_addr: String,
    /// MASTER_PORT: its port.
    pub master_port: u16,
    /// TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent already hosts the store, every rank
    /// connects to it as a client.
    pub agent_store: bool,
    /// TORCHELASTIC_RESTART_COUNT: how many times torchrun restarted the workers (0 when unset);
    /// with the agent store, each attempt gets its own namespace of keys.
    pub restart_count: u32,
}

impl Env {
    /// Reads the process's environment; `Ok(None)` when neither RANK nor WORLD_SIZE is set (not
    /// launched as part of a job).
    pub fn from_env() -> Result<Option<Env>, DistError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Env::from_env`], with the variables from `var` (for tests and other sources).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Env>, DistError> {
        let (rank, world_size) = match (var("RANK"), var("WORLD_SIZE")) {
            (None, None) => return Ok(None),
            (Some(rank), None) => {
                return Err(DistError::env("WORLD_SIZE", "", format!("unset while RANK={rank} is set")))
            }
            (None, Some(size)) => {
                return Err(DistError::env("RANK", "", format!("unset while WORLD_SIZE={size} is set")))
            }
            (Some(rank), Some(size)) => (rank, size),
        };
        let world_size: usize = parse("WORLD_SIZE", &world_size)?;
        if world_size == 0 {
            return Err(DistError::env("WORLD_SIZE", "0", "must be at least 1"));
        }
        let rank: usize = parse("RANK", &rank)?;
        if rank >= world_size {
            return Err(DistError::env("RANK", &rank.to_string(), format!("must be below WORLD_SIZE={world_size}")));
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => parse("LOCAL_RANK", &v)?,
            None => 0,
        };
        let master_addr = match var("MASTER_ADDR") {
            Some(addr) if !addr.trim().is_empty() => addr.trim().to_owned(),
            Some(addr) => return Err(DistError::env("MASTER_ADDR", &addr, "is empty")),
            None => return Err(DistError::env("MASTER_ADDR", "", "unset (the store's host)")),
        };
        let master_port = match var("MASTER_PORT") {
            Some(v) => {
                let port: u16 = parse("MASTER_PORT", &v)?;
                if port == 0 {
                    return Err(DistError::env("MASTER_PORT", &v, "must be a port number, 1 to 65535"));
                }
                port
            }
            None => return Err(DistError::env("MASTER_PORT", "", "unset (the store's port)")),
        };
        // torch.distributed compares with str(True); accept the usual spellings of true too.
        let agent_store =
            var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| matches!(v.trim(), "True" | "true" | "TRUE" | "1"));
        let restart_count = match var("TORCHELASTIC_RESTART_COUNT") {
            Some(v) if agent_store => parse("TORCHELASTIC_RESTART_COUNT", &v)?,
            _ => 0,
        };
        Ok(Some(Env { rank, world_size, local_rank, master_addr, master_port, agent_store, restart_count }))
    }

    /// Whether this process hosts the store: rank 0, unless torchrun's agent hosts it.
    pub fn hosts_store(&self) -> bool {
        !self.agent_store && self.rank == 0
    }

    /// The store namespace torch.distributed uses: one per torchrun attempt with the agent store.
    pub fn store_prefix(&self) -> Option<String> {
        self.agent_store.then(|| format!("/worker/attempt_{}", self.restart_count))
    }

    /// The configuration of a process group for this job.
    pub fn group_config(&self, backend: Backend, timeout: Duration) -> GroupConfig {
        GroupConfig {
            backend,
            rank: self.rank,
            world_size: self.world_size,
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            store: if self.hosts_store() { StoreRole::Host } else { StoreRole::Client },
            store_prefix: self.store_prefix(),
            timeout,
            device_index: self.local_rank,
        }
    }
}

fn parse<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, DistError> {
    value.trim().parse().map_err(|_| DistError::env(var, value, "not a non-negative integer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<Env>, DistError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn unset_means_not_distributed() {
        assert_eq!(env(&[("MASTER_ADDR", "x")]).unwrap(), None);
    }

    #[test]
    fn torchrun_with_agent_store() {
        let e = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank, e.master_port), (3, 4, 1, 29500));
        assert!(e.agent_store && !e.hosts_store());
        assert_eq!(e.store_prefix().as_deref(), Some("/worker/attempt_2"));
        let c = e.group_config(Backend::Gloo, Duration::from_secs(5));
        assert_eq!(c.store, StoreRole::Client);
        assert_eq!(c.device_index, 1);
    }

    #[test]
    fn kubeflow_rank0_hosts_the_store() {
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "job-master-0"), ("MASTER_PORT", "23456")])
            .unwrap()
            .unwrap();
        assert_eq!(e.local_rank, 0);
        assert!(e.hosts_store());
        assert_eq!(e.store_prefix(), None);
        let e1 = env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "job-master-0"), ("MASTER_PORT", "23456")])
            .unwrap()
            .unwrap();
        assert!(!e1.hosts_store());
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let base = [("MASTER_ADDR", "h"), ("MASTER_PORT", "1")];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "0")], "WORLD_SIZE"),
            (&[("WORLD_SIZE", "2")], "RANK"),
            (&[("RANK", "2"), ("WORLD_SIZE", "2")], "RANK"),
            (&[("RANK", "x"), ("WORLD_SIZE", "2")], "RANK"),
            (&[("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE"),
            (&[("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "-1")], "LOCAL_RANK"),
        ];
        for (pairs, var) in cases {
            let all: Vec<(&str, &str)> = base.iter().chain(pairs.iter()).copied().collect();
            match env(&all) {
                Err(DistError::Env { var: v, .. }) => assert_eq!(v, *var, "{pairs:?}"),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
        let msg = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).unwrap_err().to_string();
        assert!(msg.contains("MASTER_ADDR"), "{msg}");
        let msg = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "99999")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("MASTER_PORT"), "{msg}");
    }
}
