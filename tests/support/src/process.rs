//! Processes a test starts and must not let hang: ranks of a distributed job and the launcher
//! variables they get, with their output collected as it comes and a deadline on each.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The variables a launcher (torchrun, a PyTorchJob, a Slurm script) gives rank `rank` of
/// `world` on this machine, over loopback, with no torchrun agent store to join.
pub fn launcher_env(cmd: &mut Command, rank: usize, world: usize, port: u16) {
    cmd.env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("GLOO_SOCKET_IFNAME", "lo")
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
        .env_remove("TORCHELASTIC_RESTART_COUNT");
}

/// A started process whose output (stdout and stderr) is collected as it comes, so a chatty
/// process never blocks on a full pipe; killed when dropped.
pub struct Running {
    child: Child,
    text: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let text = Arc::new(Mutex::new(String::new()));
        let pipes: Vec<Box<dyn Read + Send>> =
            vec![Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        let readers = pipes
            .into_iter()
            .map(|pipe| {
                let text = Arc::clone(&text);
                std::thread::spawn(move || {
                    for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                        let mut t = text.lock().unwrap();
                        t.push_str(&line);
                        t.push('\n');
                    }
                })
            })
            .collect();
        Running { child, text, readers }
    }

    /// The output so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until the output contains `needle`; false if the process ended or `limit` passed first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.text().contains(needle) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                return self.text().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Exit code (None when killed by a signal), output and time waited; past `limit` the
    /// process is killed and the test fails with its output.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, String, Duration) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let text = self.text();
        match status {
            Some(s) => (s.code(), text, took),
            None => panic!("still running after {limit:?}, killed:\n{text}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the commands together and returns each one's exit code and output; a process still
/// running `limit` after the previous one ended fails the test (and every one is killed).
pub fn run_all(commands: Vec<Command>, limit: Duration) -> Vec<(Option<i32>, String)> {
    let running: Vec<Running> = commands.into_iter().map(Running::spawn).collect();
    running
        .into_iter()
        .map(|r| {
            let (code, text, _) = r.finish(limit);
            (code, text)
        })
        .collect()
}
