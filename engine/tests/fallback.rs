//! The epoll backend takes over when io_uring is forbidden: the engine runs under a seccomp
//! filter that fails the io_uring system calls with EPERM, as Docker's default profile and
//! hardened kernels (`kernel.io_uring_disabled`) do.

mod common;

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::net::{echo_server, free_tcp_addr, free_udp_addr};
use common::node::{Engine, NodeConfig, READY_TIMEOUT};
use common::{SESSION_TIMEOUT, TestDir, wait_echo};

const MAP: u32 = 9;

/// io_uring_setup, io_uring_enter, io_uring_register (the same numbers on every architecture:
/// they are in the generic syscall table).
const IO_URING_SYSCALLS: [u32; 3] = [425, 426, 427];

/// The engine binary, run under a seccomp filter that denies io_uring.
fn engine_without_io_uring() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engine"));
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; the filter lives on the closure's stack for the duration.
    unsafe {
        command.pre_exec(deny_io_uring);
    }
    command
}

fn deny_io_uring() -> io::Result<()> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf: 0,
        k,
    };
    let filter = [
        // A = seccomp_data.nr
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jeq(IO_URING_SYSCALLS[0], 3),
        jeq(IO_URING_SYSCALLS[1], 2),
        jeq(IO_URING_SYSCALLS[2], 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls with a valid filter program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn engine_falls_back_to_epoll_when_io_uring_is_forbidden() {
    let echo = echo_server();
    let dir = TestDir::new("fallback");
    let server_udp = free_udp_addr();
    let mut server_config = NodeConfig::new(&dir, "server")
        .shards(2)
        .listen(server_udp)
        .peer("client", None)
        .allow(MAP, echo.addr());
    // The automatic choice is what is under test, whatever the suite's backend.
    server_config.backend = None;
    let client_config = NodeConfig::new(&dir, "client")
        .peer("server", Some(server_udp))
        .map(MAP, free_tcp_addr(), "server");

    let mut server =
        Engine::spawn_command(engine_without_io_uring(), &dir, "server", &server_config);
    server.wait_ready(READY_TIMEOUT);
    let log = server.log();
    assert!(
        log.contains("io_uring is not available") && log.contains("using the epoll backend"),
        "the engine says which backend it chose and why:\n{log}"
    );
    let _client = Engine::start(&dir, "client", &client_config);
    wait_echo(
        client_config.map_addr(MAP),
        "echo through the epoll server",
        SESSION_TIMEOUT,
    );
    let status = common::node::status(&server_config.control).expect("ctl status");
    assert_eq!(status.backend, "epoll", "{status:#?}");
    server.stop();

    // Forcing io_uring where it is forbidden is an error that says so, not a silent fallback.
    let mut forced_config = server_config.clone();
    forced_config.backend = Some("io_uring".into());
    forced_config.listen = Some(free_udp_addr());
    forced_config.control = dir.path().join("forced.sock");
    let mut forced =
        Engine::spawn_command(engine_without_io_uring(), &dir, "forced", &forced_config);
    let code = forced.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(1), "{}", forced.log());
    assert!(
        forced.log().contains("io_uring"),
        "the error names io_uring:\n{}",
        forced.log()
    );
}

/// The engine binary without CAP_IPC_LOCK (dropped from the bounding set, so root does not
/// regain it at exec) and with RLIMIT_MEMLOCK at 0: io_uring may not pin its buffer rings.
fn engine_without_memlock() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engine"));
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) and
    // setrlimit(2), which are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            const CAP_IPC_LOCK: libc::c_ulong = 14;
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0
                || libc::setrlimit(libc::RLIMIT_MEMLOCK, &none) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

#[test]
fn engine_falls_back_to_epoll_when_rlimit_memlock_is_too_low() {
    let dir = TestDir::new("fallback-memlock");
    let mut config = NodeConfig::new(&dir, "node").listen(free_udp_addr());
    config.backend = None;
    let mut engine = Engine::spawn_command(engine_without_memlock(), &dir, "node", &config);
    engine.wait_ready(READY_TIMEOUT);
    let log = engine.log();
    assert!(
        log.contains("RLIMIT_MEMLOCK is 0 KiB") && log.contains("using the epoll backend"),
        "the engine says why it does not use io_uring:\n{log}"
    );
    let status = common::node::status(&config.control).expect("ctl status");
    assert_eq!(status.backend, "epoll", "{status:#?}");
    engine.stop();

    let mut forced = config.clone();
    forced.backend = Some("io_uring".into());
    forced.control = dir.path().join("forced.sock");
    let mut engine = Engine::spawn_command(engine_without_memlock(), &dir, "forced", &forced);
    let code = engine.wait_exit(Duration::from_secs(20));
    let log = engine.log();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("io.backend is io_uring") && log.contains("RLIMIT_MEMLOCK"),
        "the error says what to change:\n{log}"
    );
}
