//! A fake OpenAI-compatible chat-completions server on 127.0.0.1:0: it counts
//! calls, records what it was sent, and can be told to fail (500) or hang.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Answer = 0,
    Fail = 1,
    Hang = 2,
    /// Answers with NUL characters in the text (PostgreSQL cannot store them).
    Nul = 3,
}

#[derive(Default)]
struct State {
    mode: AtomicU8,
    calls: AtomicUsize,
    requests: Mutex<Vec<Value>>,
    authorizations: Mutex<Vec<Option<String>>>,
}

pub struct FakeLlm {
    /// What `LLM_BASE_URL` should be.
    pub base_url: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeLlm {
    pub fn start() -> Self {
        let state = Arc::new(State::default());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/chat/completions", web::post().to(complete))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            state,
            handle,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The JSON bodies received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.state.authorizations.lock().unwrap().clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        // The stop command is sent at once; nothing needs to wait for it.
        let _stopping = self.handle.stop(false);
    }
}

// The fake speaks plain actix: it is the LLM's side, not a Kai route.
#[allow(clippy::disallowed_types)]
async fn complete(
    req: HttpRequest,
    state: web::Data<State>,
    body: web::Json<Value>,
) -> HttpResponse {
    let n = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    state.requests.lock().unwrap().push(body.into_inner());
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    state.authorizations.lock().unwrap().push(auth);
    match state.mode.load(Ordering::SeqCst) {
        1 => HttpResponse::InternalServerError()
            .json(json!({"error": {"message": "model overloaded"}})),
        // Never answers: a 504 can only come from the client's own timeout.
        2 => std::future::pending().await,
        3 => HttpResponse::Ok().json(answer("\u{0}I'm\u{0} here.\u{0}")),
        _ => HttpResponse::Ok().json(answer(&format!("I'm here for you (reply {n})."))),
    }
}

fn answer(content: &str) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
    })
}
