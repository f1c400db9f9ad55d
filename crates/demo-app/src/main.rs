//! `mirrorkit-demo-app --listen ADDR:PORT --data DIR`: the demo module's notes service.
//! `mirrorkit-demo-app --probe ADDR:PORT`: exit 0 if the service there answers `/health`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mirrorkit_demo_app::{node_name, notes::Notes, serve, App};

const USAGE: &str = "usage: mirrorkit-demo-app --listen ADDR:PORT --data DIR\n       \
                     mirrorkit-demo-app --probe ADDR:PORT";
/// How long a probe waits for the connection and for the answer.
const PROBE_TIMEOUT_MS: u64 = 1_000;

enum Mode {
    Serve { listen: SocketAddr, data: PathBuf },
    Probe(SocketAddr),
}

fn parse_args() -> Result<Mode, String> {
    let mut listen = None;
    let mut data = None;
    let mut probe = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value("--listen")?),
            "--data" => data = Some(PathBuf::from(value("--data")?)),
            "--probe" => probe = Some(value("--probe")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let addr = |s: String, what: &str| {
        s.parse::<SocketAddr>()
            .map_err(|_| format!("{what} {s:?} is not ADDR:PORT (such as 0.0.0.0:8080)"))
    };
    match (listen, data, probe) {
        (None, None, Some(p)) => Ok(Mode::Probe(addr(p, "--probe")?)),
        (Some(l), Some(data), None) => Ok(Mode::Serve {
            listen: addr(l, "--listen")?,
            data,
        }),
        _ => Err("give --listen and --data, or --probe alone".into()),
    }
}

fn main() -> ExitCode {
    let mode = match parse_args() {
        Ok(m) => m,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("mirrorkit-demo-app: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match mode {
        Mode::Serve { listen, data } => run(listen, data),
        Mode::Probe(addr) => probe(addr),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorkit-demo-app: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(listen: SocketAddr, data: PathBuf) -> Result<(), String> {
    let (notes, dropped) = Notes::open(&data)
        .map_err(|e| format!("cannot open the notes in {}: {e}", data.display()))?;
    if dropped > 0 {
        eprintln!(
            "mirrorkit-demo-app: dropped {dropped} bytes of a note whose write was cut short (it \
             was never acknowledged)"
        );
    }
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let app = Arc::new(App {
        notes,
        node: node_name(),
        data_dir: data,
    });
    // On stdout, for whoever started us with port 0.
    println!("listening on {local}");
    let _ = std::io::stdout().flush();
    serve(listener, app).map_err(|e| format!("serving on {local} failed: {e}"))
}

fn probe(addr: SocketAddr) -> Result<(), String> {
    let timeout = Duration::from_millis(PROBE_TIMEOUT_MS);
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    conn.set_read_timeout(Some(timeout))
        .and_then(|()| conn.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = Vec::new();
    conn.take(4096)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{addr}: {e}"))?;
    let status_line = String::from_utf8_lossy(&answer);
    let status_line = status_line.lines().next().unwrap_or_default();
    if status_line.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("{addr}/health answered {status_line:?}"))
    }
}
