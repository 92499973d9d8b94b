//! A TCP proxy between the service and Postgres that can pass traffic,
//! freeze it (stop forwarding, keep every socket open: what a hung server or
//! a black-holed network looks like), cut every connection (a failover,
//! a restart of a middlebox) or strand the open ones (a NAT or firewall that
//! forgot them: they go silent for good while new connections work). Real
//! sockets, real Postgres behind it.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct FaultProxy {
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    /// Replaced on every cut or strand: connections opened before it are
    /// closed or stranded.
    generation: Arc<std::sync::Mutex<Generation>>,
    /// Cancelled on drop: closes every connection, stranded ones too.
    closed: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

#[derive(Clone, Default)]
struct Generation {
    cut: CancellationToken,
    stranded: CancellationToken,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let generation = Arc::new(std::sync::Mutex::new(Generation::default()));
        let closed = CancellationToken::new();
        let (frozen_tx, gen_, closing) = (frozen.clone(), generation.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = closing.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else {
                    return;
                };
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let Generation { cut, stranded } = gen_.lock().unwrap().clone();
                // Whatever ends the generation, dropping the proxy ends it too.
                let cut = cut.child_token();
                let closing = closing.clone();
                let cut_ = cut.clone();
                tokio::spawn(async move {
                    closing.cancelled().await;
                    cut_.cancel();
                });
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
                    let (cut, stranded) = (cut.clone(), stranded.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        // A stranded connection keeps its sockets open and
                        // forwards nothing, until it is cut.
                        let silent = async {
                            stranded.cancelled().await;
                            cut.cancelled().await;
                        };
                        tokio::pin!(silent);
                        loop {
                            // While frozen, nothing is read or written.
                            tokio::select! {
                                _ = cut.cancelled() => return,
                                r = thawed.wait_for(|frozen| !frozen) => if r.is_err() { return },
                            }
                            let n = tokio::select! {
                                _ = &mut silent => return,
                                n = from.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
                            };
                            tokio::select! {
                                _ = cut.cancelled() => return,
                                r = thawed.wait_for(|frozen| !frozen) => if r.is_err() { return },
                            }
                            if stranded.is_cancelled() {
                                silent.await;
                                return;
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
            closed,
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
        current.cut.cancel();
        *current = Generation::default();
    }

    /// Every open connection goes silent for good (no data, no FIN, no RST);
    /// new ones are accepted and forwarded as before.
    pub fn strand(&self) {
        let mut current = self.generation.lock().unwrap();
        current.stranded.cancel();
        *current = Generation::default();
    }
}
