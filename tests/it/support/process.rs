//! Nodes as real processes (`brobygger serve`), for tests where a node goes down, is killed,
//! or its memory is measured.

use super::TestPki;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `brobygger serve` process with its log.
pub struct NodeProcess {
    child: Child,
    pub org: String,
    pub federation_addr: SocketAddr,
    pub local_addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl NodeProcess {
    /// Starts `org`'s node from its generated config, both listeners on port 0, polling the
    /// manifest file every 50 ms.
    pub async fn spawn(pki: &TestPki, org: &str, env: &[(&str, &str)]) -> Self {
        let config = pki.config_path(org);
        let mut command = Command::new(super::binary());
        command
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("BROBYGGER_FEDERATION__LISTEN", "127.0.0.1:0")
            .env("BROBYGGER_LOCAL_API__LISTEN", "127.0.0.1:0")
            .env("BROBYGGER_FEDERATION__MANIFEST_POLL_INTERVAL_MS", "50")
            .env("BROBYGGER_SERVER__SHUTDOWN_TIMEOUT_SECS", "2")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .expect("the node did not start within 60 s")
            .unwrap()
            .unwrap_or_else(|| panic!("{org} exited: {}", log.lock().unwrap()));
        // "<org> is running: federation on https://ADDR, local API on https://ADDR"
        let federation_addr = line
            .split("federation on https://")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap()
            .parse()
            .unwrap();
        let local_addr = line.rsplit("://").next().unwrap().trim().parse().unwrap();
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Self {
            child,
            org: org.to_owned(),
            federation_addr,
            local_addr,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process's resident memory in KiB, from `/proc`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits for a graceful exit; returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        self.signal("-TERM");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the node did not stop within 20 s of SIGTERM")
            .unwrap()
            .code()
    }

    /// SIGKILL: the process dies at once, wherever it is.
    pub async fn kill(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait().await;
    }

    /// Waits for the process to exit by itself (say, at an armed failpoint).
    pub async fn exited(mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit: {}", self.org, self.log()))
            .unwrap()
    }
}

/// Publishes a manifest (next serial) with the nodes' real federation endpoints; running nodes
/// pick it up from the file.
pub fn publish_endpoints(pki: &TestPki, nodes: &[&NodeProcess]) {
    let mut doc = pki.manifest_doc();
    doc.serial += 1;
    for member in &mut doc.members {
        if let Some(node) = nodes.iter().find(|n| n.org == member.org_id) {
            member.endpoint = format!("https://{}", node.federation_addr);
        }
    }
    pki.write_manifest(&doc);
}
