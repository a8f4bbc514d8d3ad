//! The tunnels under comparison and how each is started across the emulated link: node A
//! (namespace A) is the client side, where iperf3 and the latency probe connect; node B runs
//! their servers. Every tunnel offers two local TCP entry points in A, one for the bulk
//! transfer and one for the request/response probe, leading to [`BULK_PORT`] and
//! [`RR_PORT`] on B.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use engine_api::control::{Command, Request, Response};

use super::model::{Profile, TunnelInfo};
use super::process::Proc;
use crate::linkem::ADDR_B;

/// iperf3's server port on node B.
pub const BULK_PORT: u16 = 5201;
/// The request/response echo server's port on node B.
pub const RR_PORT: u16 = 7000;
/// Local entry points of a tunnel on node A (bulk, rr).
const ENTRY_PORTS: [u16; 2] = [12948, 12949];
/// UDP ports of a tunnel's server side on node B.
const TUNNEL_UDP_PORTS: [u16; 2] = [29900, 29901];
/// kcptun's UDP payload size (its default).
const KCP_MTU: u64 = 1350;
/// Longest a tunnel may take to come up.
const START_LIMIT: Duration = Duration::from_secs(15);
/// A key used only between the two benchmark namespaces.
const BENCH_KEY: &str = "lH8m3qN2vR6tY1uI0oP9aS7dF4gJ5kL8zX2cV3bN6mQ=";
const KCP_KEY: &str = "lossbench";

/// The programs a comparison runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub engine: PathBuf,
    pub rr: PathBuf,
    pub iperf3: PathBuf,
    pub kcptun_client: PathBuf,
    pub kcptun_server: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Plain TCP across the link; `Some` names the congestion control, None is the kernel's
    /// default.
    Tcp(Option<String>),
    /// kcptun (`--mode fast2 --crypt aes`, FEC 10/3, windows sized for the path).
    Kcptun,
    /// coretun with its defaults plus `extra` config lines (empty: the defaults; the tuned
    /// variant adds [`ENGINE_TUNED`] unless `lossbench --tuned` says otherwise).
    Engine { extra: String },
}

/// What the tuned engine adds to its config: full-size packets for a 1500-byte link (1472 =
/// 1500 - IPv4 - UDP) instead of the default 1400, and one shard per node (two engines, the
/// emulator and iperf3 share two cores here).
pub const ENGINE_TUNED: &str = "mtu: 1472\nshards: 1\n";

/// A tunnel under comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub name: String,
    pub kind: Kind,
}

impl Tunnel {
    pub fn describe(&self, default_cc: &str) -> TunnelInfo {
        let description = match &self.kind {
            Kind::Tcp(None) => format!(
                "plain TCP across the link, the kernel's default congestion control ({default_cc})"
            ),
            Kind::Tcp(Some(cc)) => format!("plain TCP across the link, congestion control {cc}"),
            Kind::Kcptun => "kcptun (Debian package): --mode fast2 --crypt aes --datashard 10 \
                --parityshard 3 --nocomp (iperf3's data is random), --sndwnd/--rcvwnd twice the \
                path's bandwidth-delay product in packets (at least 256)"
                .to_owned(),
            Kind::Engine { extra } if extra.trim().is_empty() => {
                "coretun with its defaults (profile fast2, fec adaptive, mtu 1400, shards auto)"
                    .to_owned()
            }
            Kind::Engine { extra } => format!(
                "coretun, defaults plus: {}",
                extra.trim().replace('\n', ", ")
            ),
        };
        TunnelInfo {
            name: self.name.clone(),
            description,
        }
    }

    /// The congestion control the TCP endpoints of the measurement should ask for.
    pub fn congestion(&self) -> Option<&str> {
        match &self.kind {
            Kind::Tcp(cc) => cc.as_deref(),
            _ => None,
        }
    }

    /// Starts the tunnel between namespaces `ns_a` and `ns_b`, waiting until it carries
    /// connections. `scratch` is a directory for its files.
    pub fn start(
        &self,
        tools: &Tools,
        profile: &Profile,
        [ns_a, ns_b]: [&str; 2],
        scratch: &Path,
    ) -> io::Result<Running> {
        match &self.kind {
            Kind::Tcp(_) => Ok(Running {
                entries: [BULK_PORT, RR_PORT].map(|p| SocketAddr::from((ADDR_B, p))),
                procs: Vec::new(),
            }),
            Kind::Kcptun => start_kcptun(tools, profile, [ns_a, ns_b]),
            Kind::Engine { extra } => start_engines(tools, extra, [ns_a, ns_b], scratch),
        }
    }
}

/// The tunnels of a full comparison, in report order; `tuned` is what the tuned engine adds to
/// its config (YAML lines).
pub fn standard_tunnels(tuned: &str) -> Vec<Tunnel> {
    let t = |name: &str, kind| Tunnel {
        name: name.to_owned(),
        kind,
    };
    vec![
        t("tcp", Kind::Tcp(None)),
        t("tcp-cubic", Kind::Tcp(Some("cubic".into()))),
        t("tcp-bbr", Kind::Tcp(Some("bbr".into()))),
        t("kcptun", Kind::Kcptun),
        t(
            "coretun",
            Kind::Engine {
                extra: String::new(),
            },
        ),
        t(
            "coretun-tuned",
            Kind::Engine {
                extra: tuned.to_owned(),
            },
        ),
    ]
}

/// A started tunnel; dropping it stops its processes.
#[derive(Debug)]
pub struct Running {
    /// Where node A connects: [bulk, rr].
    pub entries: [SocketAddr; 2],
    /// The tunnel's processes on both nodes.
    procs: Vec<Proc>,
}

impl Running {
    /// CPU seconds all the tunnel's processes have used so far; None for plain TCP (no tunnel
    /// process) or when a process is gone.
    pub fn cpu_seconds(&self) -> Option<f64> {
        if self.procs.is_empty() {
            return None;
        }
        self.procs.iter().map(Proc::cpu_seconds).sum()
    }

    /// A process of the tunnel that has exited, with what it printed.
    pub fn exited(&mut self) -> Option<String> {
        self.procs.iter_mut().find(|p| !p.is_running()).map(|p| {
            let out = p.kill_and_collect();
            format!("a tunnel process exited: {}", out.stderr.trim())
        })
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// kcptun windows: twice the path's bandwidth-delay product in packets, at least 256 (the
/// server's default receive window is 512 packets; the client's send window 128).
pub fn kcp_window(profile: &Profile) -> u64 {
    let bdp_bytes = profile.rate_bps / 8 * profile.rtt_ms / 1000;
    (2 * bdp_bytes).div_ceil(KCP_MTU).max(256)
}

fn start_kcptun(tools: &Tools, profile: &Profile, [ns_a, ns_b]: [&str; 2]) -> io::Result<Running> {
    let window = kcp_window(profile).to_string();
    let common = |v: &mut Vec<String>| {
        for a in [
            "--mode",
            "fast2",
            "--crypt",
            "aes",
            "--key",
            KCP_KEY,
            "--datashard",
            "10",
            "--parityshard",
            "3",
            "--nocomp",
            "--quiet",
            "--sndwnd",
            &window,
            "--rcvwnd",
            &window,
        ] {
            v.push(a.to_owned());
        }
    };
    let mut procs = Vec::new();
    for (i, target) in [BULK_PORT, RR_PORT].into_iter().enumerate() {
        let udp = SocketAddrV4::new(ADDR_B, TUNNEL_UDP_PORTS[i]);
        let mut server = vec![
            "-l".to_owned(),
            udp.to_string(),
            "-t".to_owned(),
            local(target).to_string(),
        ];
        common(&mut server);
        procs.push(Proc::spawn(
            "kcptun-server",
            ns_b,
            &tools.kcptun_server,
            &server,
        )?);
        let mut client = vec![
            "-l".to_owned(),
            local(ENTRY_PORTS[i]).to_string(),
            "-r".to_owned(),
            udp.to_string(),
        ];
        common(&mut client);
        let mut proc = Proc::spawn("kcptun-client", ns_a, &tools.kcptun_client, &client)?;
        proc.wait_listening(ENTRY_PORTS[i], START_LIMIT)?;
        procs.push(proc);
    }
    Ok(Running {
        entries: ENTRY_PORTS.map(local),
        procs,
    })
}

/// The two engines' configs: B accepts and allows the two targets, A dials B and maps the two
/// entry ports.
fn engine_configs(extra: &str, scratch: &Path) -> [String; 2] {
    let mut extra = extra.trim().to_owned();
    if !extra.is_empty() {
        extra.push('\n');
    }
    let sock = |name: &str| scratch.join(format!("{name}.sock")).display().to_string();
    let server = format!(
        "name: server\nlisten: {listen}\nkey: \"{BENCH_KEY}\"\n{extra}peers: []\nmaps: []\n\
         allow:\n  - id: 1\n    target: {bulk}\n  - id: 2\n    target: {rr}\n\
         control:\n  socket: {sock}\nlog:\n  level: warn\n",
        listen = SocketAddrV4::new(ADDR_B, TUNNEL_UDP_PORTS[0]),
        bulk = local(BULK_PORT),
        rr = local(RR_PORT),
        sock = sock("server"),
    );
    let client = format!(
        "name: client\nkey: \"{BENCH_KEY}\"\n{extra}peers:\n  - name: server\n    addr: {addr}\n\
         maps:\n  - id: 1\n    listen: {e0}\n    peer: server\n  - id: 2\n    listen: {e1}\n    peer: server\n\
         allow: []\ncontrol:\n  socket: {sock}\nlog:\n  level: warn\n",
        addr = SocketAddrV4::new(ADDR_B, TUNNEL_UDP_PORTS[0]),
        e0 = local(ENTRY_PORTS[0]),
        e1 = local(ENTRY_PORTS[1]),
        sock = sock("client"),
    );
    [client, server]
}

fn start_engines(
    tools: &Tools,
    extra: &str,
    [ns_a, ns_b]: [&str; 2],
    scratch: &Path,
) -> io::Result<Running> {
    let [client, server] = engine_configs(extra, scratch);
    let (client_path, server_path) = (scratch.join("client.yaml"), scratch.join("server.yaml"));
    fs::write(&client_path, client)?;
    fs::write(&server_path, server)?;
    let arg = |p: &Path| vec!["-c".to_owned(), p.display().to_string()];
    let server = Proc::spawn("engine (node B)", ns_b, &tools.engine, &arg(&server_path))?;
    let mut client = Proc::spawn("engine (node A)", ns_a, &tools.engine, &arg(&client_path))?;
    client.wait_listening(ENTRY_PORTS[1], START_LIMIT)?;
    let mut procs = vec![server, client];
    // The maps listen at once; wait for the session too, so the first measurement does not
    // time the handshake.
    let control = scratch.join("client.sock");
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if peer_up(&control).unwrap_or(false) {
            break;
        }
        if let Some(p) = procs.iter_mut().find(|p| !p.is_running()) {
            let out = p.kill_and_collect();
            return Err(io::Error::other(format!(
                "an engine exited at start-up: {}",
                out.stderr.trim()
            )));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "no session between the engines after {} s",
                START_LIMIT.as_secs()
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(Running {
        entries: ENTRY_PORTS.map(local),
        procs,
    })
}

/// Whether the engine behind control socket `path` has a session with every peer.
fn peer_up(path: &Path) -> io::Result<bool> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(&Request::new(Command::Peers).to_line())?;
    let mut line = Vec::new();
    BufReader::new(stream).read_until(b'\n', &mut line)?;
    match Response::parse(&line).map_err(io::Error::other)? {
        Response::Peers { peers } => Ok(!peers.is_empty() && peers.iter().all(|p| p.state == "up")),
        other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lossbench::model::standard_profiles;

    #[test]
    fn kcptun_windows_follow_the_path() {
        let profiles = standard_profiles();
        let by_name = |n: &str| profiles.iter().find(|p| p.name == n).unwrap();
        // 100 Mbit/s x 50 ms = 625 000 bytes = 463 packets of 1350; twice that.
        assert_eq!(kcp_window(by_name("rtt50-5pct")), 926);
        assert_eq!(kcp_window(by_name("clean")), 256);
    }

    #[test]
    fn engine_configs_are_valid_and_join_the_maps() {
        let dir = std::env::temp_dir();
        for (extra, tuned) in [("", false), (ENGINE_TUNED, true)] {
            let [client, server] = engine_configs(extra, &dir);
            for (label, text) in [("client", &client), ("server", &server)] {
                let path = dir.join(format!("{label}.yaml"));
                let config = engine_api::config::Config::parse(&path, text)
                    .unwrap_or_else(|e| panic!("{label}:\n{text}\n{e}"));
                assert_eq!(config.transport.mtu == 1472, tuned, "{label}");
            }
            assert!(client.contains("listen: 127.0.0.1:12948"));
            assert!(server.contains("target: 127.0.0.1:5201"));
        }
    }
}
