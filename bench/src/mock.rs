//! A fast mock Accelerate: answers 200 to everything and notes when each
//! benchmark event arrived.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::load::{index_of, Clock};

pub struct Mock {
    pub addr: SocketAddr,
    /// Arrival time (µs on the bench clock) per event index; 0 = not yet.
    pub got_at: Arc<Vec<AtomicU64>>,
    pub received: Arc<AtomicU64>,
}

impl Mock {
    pub async fn start(capacity: usize, clock: Clock) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let got_at: Arc<Vec<AtomicU64>> =
            Arc::new((0..capacity).map(|_| AtomicU64::new(0)).collect());
        let received = Arc::new(AtomicU64::new(0));
        let (got, count) = (Arc::clone(&got_at), Arc::clone(&received));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let (got, count) = (Arc::clone(&got), Arc::clone(&count));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (got, count) = (Arc::clone(&got), Arc::clone(&count));
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if let Some(slot) = index_of(&body).and_then(|i| got.get(i)) {
                                let _ = slot.compare_exchange(
                                    0,
                                    clock.micros().max(1),
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                );
                            }
                            count.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            got_at,
            received,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhooks/checkoutdotcom", self.addr)
    }

    /// How many of the events in `range` have arrived.
    pub fn arrived(&self, range: std::ops::Range<usize>) -> usize {
        self.got_at[range]
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) != 0)
            .count()
    }
}
