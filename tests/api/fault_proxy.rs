//! A TCP proxy between the service and Postgres that can pass traffic,
//! freeze it (stop forwarding, keep every socket open: what a hung server or
//! a black-holed network looks like) and cut every connection (a failover,
//! a restart of a middlebox). Real sockets, real Postgres behind it.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct FaultProxy {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    /// Replaced on every cut: connections opened before it are closed.
    generation: Arc<std::sync::Mutex<CancellationToken>>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (frozen_tx, gen_) = (frozen.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let cut = gen_.lock().unwrap().clone();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let mut thawed = frozen_tx.subscribe();
                    let cut = cut.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            // While frozen, nothing is read or written.
                            tokio::select! {
                                _ = cut.cancelled() => return,
                                r = thawed.wait_for(|frozen| !frozen) => if r.is_err() { return },
                            }
                            let n = tokio::select! {
                                _ = cut.cancelled() => return,
                                n = from.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
                            };
                            tokio::select! {
                                _ = cut.cancelled() => return,
                                r = thawed.wait_for(|frozen| !frozen) => if r.is_err() { return },
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self {
            addr,
            frozen,
            generation,
        }
    }

    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Closes every open connection; new ones are accepted as before.
    pub fn cut(&self) {
        let mut current = self.generation.lock().unwrap();
        current.cancel();
        *current = CancellationToken::new();
    }
}
