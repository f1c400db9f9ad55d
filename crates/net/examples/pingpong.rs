//! Round-trip latency of the authenticated QUIC link on loopback (a diagnostic, not a test):
//! `cargo run --release -p mirrorkit-net --example pingpong -- [SIZE] [COUNT]`.

use std::time::Instant;

use mirrorkit_net::pki::{generate_cluster, NodeIdentity};
use mirrorkit_net::TransportParams;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let count: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let dir = std::env::temp_dir().join(format!("pingpong-{}", std::process::id()));
    generate_cluster(&dir, "bench", &["a", "b"], true)?;
    let a = NodeIdentity::load(&dir, "a")?;
    let b = NodeIdentity::load(&dir, "b")?;
    let p = TransportParams::default();
    let ea = mirrorkit_net::endpoint(&a, "127.0.0.1:0".parse()?, &p)?;
    let eb = mirrorkit_net::endpoint(&b, "127.0.0.1:0".parse()?, &p)?;
    let addr = eb.local_addr()?;
    let server = tokio::spawn(async move {
        let conn = mirrorkit_net::accept(&eb).await.ok_or("no connection")?;
        let (mut s, mut r) = conn.accept_bi().await?;
        let mut buf = vec![0u8; size];
        while r.read_exact(&mut buf).await.is_ok() {
            s.write_all(&buf[..8]).await?;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    let conn = mirrorkit_net::connect(&ea, addr, "b").await?;
    let (mut s, mut r) = conn.open_bi().await?;
    let data = vec![7u8; size];
    let mut ack = [0u8; 8];
    let mut ts = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        s.write_all(&data).await?;
        r.read_exact(&mut ack).await?;
        ts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    ts.sort_by(|x, y| x.total_cmp(y));
    println!(
        "size {size}: round trip p50 {:.1} us, p99 {:.1} us, {:.0} MB/s, path MTU {}",
        ts[count / 2],
        ts[count * 99 / 100],
        size as f64 * count as f64 / ts.iter().sum::<f64>(),
        conn.stats().path.current_mtu
    );
    s.finish()?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
