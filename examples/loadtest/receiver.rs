//! A fast loopback receiver: keep-alive, answers 200 (500 under /fail/; under
//! /hang/ it answers nothing for a minute), counts arrivals, and remembers
//! when each event arrived when asked to.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub hung: AtomicU64,
    pub first: Mutex<Option<Instant>>,
    pub last_ok: Mutex<Option<Instant>>,
    /// event_id → arrival, when `track` is on.
    pub arrivals: Mutex<HashMap<String, Instant>>,
    pub track: std::sync::atomic::AtomicBool,
}

impl Tally {
    pub fn reset(&self) {
        self.ok.store(0, Ordering::SeqCst);
        self.failed.store(0, Ordering::SeqCst);
        self.hung.store(0, Ordering::SeqCst);
        *self.first.lock().unwrap() = None;
        *self.last_ok.lock().unwrap() = None;
        self.arrivals.lock().unwrap().clear();
    }
}

async fn receive(req: HttpRequest, body: web::Bytes, tally: web::Data<Arc<Tally>>) -> HttpResponse {
    let now = Instant::now();
    tally.first.lock().unwrap().get_or_insert(now);
    if req.path().starts_with("/hang/") {
        tally.hung.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        return HttpResponse::Ok().finish();
    }
    if req.path().starts_with("/fail/") {
        tally.failed.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::InternalServerError().finish();
    }
    if tally.track.load(Ordering::Relaxed)
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(id) = v["event_id"].as_str()
    {
        tally.arrivals.lock().unwrap().insert(id.to_owned(), now);
    }
    tally.ok.fetch_add(1, Ordering::Relaxed);
    *tally.last_ok.lock().unwrap() = Some(now);
    HttpResponse::Ok().finish()
}

/// Starts the receiver on 127.0.0.1:0 and returns its base URL.
pub fn start(tally: Arc<Tally>) -> String {
    let data = web::Data::new(tally);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(receive))
    })
    .workers(1)
    .backlog(4096)
    .max_connection_rate(4096)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind receiver");
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    format!("http://127.0.0.1:{port}")
}
