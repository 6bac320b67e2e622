//! The HTTP routes: the protocol's health, metadata and inference endpoints, `/v1/classify`,
//! `/metrics` and the web page at `/`, with every response counted and timed, and request
//! bodies admitted only while the bytes held at once stay under `--max-inflight-mb`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use super::batcher::{Announced, Job, Refused};
use super::protocol::{self, Payload, ResponseOutputs};
use super::{App, Ready};
use crate::prediction::FileResult;
use crate::prepare::PreparedBatch;

type Shared = Arc<App>;

pub(super) fn router(app: Shared) -> Router {
    let limit = app.config.max_body;
    let routes = if app.config.ui { Router::new().route("/", get(page)) } else { Router::new() };
    routes
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_versioned))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_versioned))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_versioned))
        .route("/v1/classify", post(classify))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), admit))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), track))
        .with_state(app)
}

/// Routes that load balancers and Kubernetes poll: their 503s while the model loads are
/// expected, not worth a line each.
const PROBES: [&str; 4] =
    ["/v2/health/live", "/v2/health/ready", "/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready"];

/// Counts and times every response; logs every request when asked, else the failed ones: a
/// server fault (500) always, client errors and refusals at a bounded rate.
async fn track(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let target = req.uri().path().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let secs = started.elapsed().as_secs_f64();
    app.metrics.request(&route, status, secs);
    // An error's line says why, so that the log alone explains it.
    let why = match response.extensions().get::<ErrorMessage>() {
        Some(ErrorMessage(m)) if status >= 400 => format!(": {m}"),
        _ => String::new(),
    };
    let line = || format!("{status} {target} {:.1} ms{why}", secs * 1e3);
    if app.config.log_requests || status == 500 {
        eprintln!("{}", line());
    } else if status >= 400 && !PROBES.contains(&route.as_str()) {
        app.error_log.log(line());
    }
    response
}

/// Admits a request with a body only while the bodies held at once stay within
/// `--max-inflight-mb`, counting its declared length (or the largest allowed body when it
/// declares none); beyond, it is answered 503 with Retry-After before its body is read.
async fn admit(State(app): State<Shared>, req: Request, next: Next) -> Response {
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let max = app.config.max_body as u64;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let kib = declared.unwrap_or(max).min(max).div_ceil(1024).max(1);
    let permit = u32::try_from(kib).ok().and_then(|k| Arc::clone(&app.inflight).try_acquire_many_owned(k).ok());
    let Some(permit) = permit else {
        app.metrics.refused_inflight();
        let mut e = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "request bodies in flight would exceed {} MB (--max-inflight-mb); retry shortly",
                app.config.max_inflight >> 20
            ),
        );
        e.retry_after = true;
        return e.into_response();
    };
    let response = next.run(req).await;
    drop(permit);
    response
}

/// Request body bytes held now (admitted and not yet answered).
pub(super) fn inflight_bytes(app: &App) -> usize {
    let total = app.config.max_inflight >> 10;
    total.min(tokio::sync::Semaphore::MAX_PERMITS).saturating_sub(app.inflight.available_permits()) << 10
}

/// Lines about failed requests: at most [`LOG_BURST`] per [`LOG_WINDOW`], the number left out
/// said once the window is over, so that a flood of bad requests cannot flood the log.
#[derive(Default)]
pub(super) struct RateLimitedLog(Mutex<LogWindow>);

#[derive(Default)]
struct LogWindow {
    started: Option<Instant>,
    lines: usize,
    dropped: usize,
}

const LOG_BURST: usize = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

impl RateLimitedLog {
    fn log(&self, line: String) {
        let Ok(mut w) = self.0.lock() else { return };
        let now = Instant::now();
        if w.started.is_none_or(|s| now.duration_since(s) >= LOG_WINDOW) {
            if w.dropped > 0 {
                eprintln!("({} more failed requests not logged in {} s)", w.dropped, LOG_WINDOW.as_secs());
            }
            *w = LogWindow { started: Some(now), lines: 0, dropped: 0 };
        }
        if w.lines < LOG_BURST {
            w.lines += 1;
            eprintln!("{line}");
        } else {
            w.dropped += 1;
        }
    }
}

/// `GET /`: the web page, one self-contained file that calls this server's own routes.
async fn page(State(app): State<Shared>) -> Response {
    let name = serde_json::to_string(&app.config.name).expect("a string serialises");
    let html = include_str!("ui.html").replace("__MODEL_NAME__", &name.replace('<', "\\u003c"));
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// A refused request: its status and the protocol's error object.
struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r.extensions_mut().insert(ErrorMessage(self.message));
        r
    }
}

/// An error response's message, for the log line.
#[derive(Clone)]
struct ErrorMessage(String);

fn error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError { status, message: msg.into(), retry_after: false }
}

/// One request holds at most `--max-batch` images: each becomes 600 KB of model input, so a
/// body of tiny images must not turn into gigabytes.
fn too_many(app: &App, images: usize) -> Result<(), ApiError> {
    if images > app.config.max_batch {
        let max = app.config.max_batch;
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{images} images in one request; at most {max} (--max-batch)"),
        ));
    }
    Ok(())
}

fn ready(app: &App) -> Result<&Ready, ApiError> {
    app.ready.get().ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "the model is loading"))
}

fn model<'a>(app: &'a App, name: &str) -> Result<&'a Ready, ApiError> {
    if name != app.config.name {
        return Err(error(StatusCode::NOT_FOUND, format!("no model '{name}' (this server has '{}')", app.config.name)));
    }
    ready(app)
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(
        json!({"name": "infer", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data", "classification"]}),
    )
}

async fn server_ready(State(app): State<Shared>) -> StatusCode {
    if app.ready.get().is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn model_metadata(State(app): State<Shared>, Path(name): Path<String>) -> Response {
    match model(&app, &name) {
        Ok(r) => Json(r.metadata.clone()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The one version this server has.
fn version(v: &str) -> Result<(), ApiError> {
    match v {
        "1" => Ok(()),
        _ => Err(error(StatusCode::NOT_FOUND, format!("no version '{v}' of the model (this server has version 1)"))),
    }
}

async fn model_metadata_versioned(state: State<Shared>, Path((name, v)): Path<(String, String)>) -> Response {
    match version(&v) {
        Ok(()) => model_metadata(state, Path(name)).await,
        Err(e) => e.into_response(),
    }
}

async fn model_ready(State(app): State<Shared>, Path(name): Path<String>) -> Response {
    match model(&app, &name) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model_ready_versioned(state: State<Shared>, Path((name, v)): Path<(String, String)>) -> Response {
    match version(&v) {
        Ok(()) => model_ready(state, Path(name)).await,
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(app): State<Shared>) -> Response {
    let depth = app.ready.get().map_or(0, |r| r.queue.depth());
    let text = app.metrics.render(depth, inflight_bytes(&app));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Decodes and preprocesses encoded images on the decoding threads; each image's input or
/// error.
async fn prepare(ready: &Ready, images: Vec<Vec<u8>>) -> Result<PreparedBatch, ApiError> {
    let classifier = Arc::clone(&ready.classifier);
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
        classifier.prepare_encoded(&refs)
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("preparing images: {e}")))
}

/// Runs `n` preprocessed images through the batching queue; their model outputs.
async fn run(ready: &Ready, on_way: Announced, inputs: Vec<f32>, n: usize) -> Result<Vec<f32>, ApiError> {
    let (tx, rx) = oneshot::channel();
    match ready.queue.submit(Job { inputs, n, reply: tx }, on_way) {
        Ok(()) => {}
        Err(Refused::Full) => {
            let mut e = error(StatusCode::SERVICE_UNAVAILABLE, "the queue is full; retry shortly");
            e.retry_after = true;
            return Err(e);
        }
        Err(Refused::Closed) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping")),
    }
    match rx.await {
        Ok(Ok(outputs)) => Ok(outputs),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(_) => Err(error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping")),
    }
}

async fn infer(State(app): State<Shared>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    infer_inner(&app, &name, &headers, &body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn infer_versioned(
    state: State<Shared>,
    Path((name, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match version(&v) {
        Ok(()) => infer(state, Path(name), headers, body).await,
        Err(e) => e.into_response(),
    }
}

/// The protocol's inference route: parse the request, gather its model input, run it with
/// the other requests of its batch, encode the response.
async fn infer_inner(app: &App, name: &str, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let ready = model(app, name)?;
    let on_way = ready.queue.announce();
    let mut req = parse_request(ready, headers, body)?;
    let (inputs, n) = gather(app, ready, &mut req).await?;
    let outputs = run(ready, on_way, inputs, n).await?;
    Ok(encode_response(app, ready, &req, n, &outputs))
}

/// The request, checked: its length header, its encoding, then its body.
fn parse_request(ready: &Ready, headers: &HeaderMap, body: &[u8]) -> Result<protocol::Request, ApiError> {
    let json_len = match headers.get(protocol::HEADER_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| error(StatusCode::BAD_REQUEST, "Inference-Header-Content-Length must be a number"))?,
        ),
        None => None,
    };
    if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v != "identity") {
        return Err(error(StatusCode::BAD_REQUEST, "compressed request bodies are not supported"));
    }
    let side = ready.classifier.metadata().preprocess.crop_size as usize;
    protocol::parse(body, json_len, side).map_err(|e| error(StatusCode::BAD_REQUEST, e.0))
}

/// The request's model input and image count: its tensor as it is, or its images decoded
/// and preprocessed. The payload is moved out, not copied: the response needs only the
/// request's other fields.
async fn gather(app: &App, ready: &Ready, req: &mut protocol::Request) -> Result<(Vec<f32>, usize), ApiError> {
    let payload = std::mem::replace(&mut req.payload, Payload::Images(Vec::new()));
    let n = match &payload {
        Payload::Tensor { n, .. } => *n,
        Payload::Images(images) => images.len(),
    };
    too_many(app, n)?;
    if n == 0 {
        return Err(error(StatusCode::BAD_REQUEST, "no image in the request"));
    }
    match payload {
        Payload::Tensor { values, .. } => Ok((values, n)),
        Payload::Images(images) => {
            let batch = prepare(ready, images).await?;
            // The protocol has no per-element errors: the request fails, naming the image.
            if let Some((i, Err(e))) = batch.0.iter().enumerate().find(|(_, p)| p.is_err()) {
                return Err(error(StatusCode::BAD_REQUEST, format!("image {i}: {e}")));
            }
            Ok(batch.input())
        }
    }
}

/// The protocol's response: probabilities and top-k labels from one ranking of the outputs.
fn encode_response(app: &App, ready: &Ready, req: &protocol::Request, n: usize, outputs: &[f32]) -> Response {
    let c = &ready.classifier;
    let classes = c.metadata().classes.len();
    let ranked = c.rank(outputs, req.top_k.min(classes));
    let mut probabilities = Vec::with_capacity(n * classes);
    let mut labels = Vec::with_capacity(n);
    for r in ranked {
        probabilities.extend(r.probabilities);
        labels.push(r.prediction.top_k.into_iter().map(|s| s.label).collect());
    }
    let outputs = ResponseOutputs { n, classes, probabilities, labels };
    let (body, json_len) = protocol::encode(&app.config.name, req, &outputs);
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    match json_len {
        Some(len) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(protocol::HEADER_LENGTH, HeaderValue::from(len));
        }
        None => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    response
}

#[derive(Deserialize)]
struct ClassifyQuery {
    top_k: Option<usize>,
    name: Option<String>,
}

/// `POST /v1/classify`: one image as the body, or several as `multipart/form-data`; answers
/// the records of `infer --format jsonl`, one per line, in order.
async fn classify(State(app): State<Shared>, Query(q): Query<ClassifyQuery>, req: Request) -> Response {
    classify_inner(&app, q, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn classify_inner(app: &Shared, q: ClassifyQuery, req: Request) -> Result<Response, ApiError> {
    let ready = ready(app)?;
    let named = read_images(app, &q, req).await?;
    // Announced only once the body is in: a slow upload must not hold other batches back.
    let on_way = ready.queue.announce();
    let (names, bodies): (Vec<String>, Vec<Vec<u8>>) = named.into_iter().unzip();
    let batch = prepare(ready, bodies).await?;
    let (input, n) = batch.input();
    let predictions = match n {
        0 => Vec::new(),
        n => ready.classifier.predictions_top(&run(ready, on_way, input, n).await?, q.top_k.unwrap_or(1)),
    };
    let mut body = String::new();
    let mut first_error = None;
    for (name, result) in names.iter().zip(batch.results(Ok(predictions))) {
        let record = FileResult { path: PathBuf::from(name), result };
        first_error = first_error.or_else(|| record.error_line());
        body.push_str(&serde_json::to_string(&record).expect("records serialise"));
        body.push('\n');
    }
    // One image that cannot be read is the request's fault; in a set, the others are answered.
    let status = if n == 0 && names.len() == 1 { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let mut response = (status, [(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
    if let Some(e) = first_error.filter(|_| status == StatusCode::BAD_REQUEST) {
        response.extensions_mut().insert(ErrorMessage(e));
    }
    Ok(response)
}

/// The request's images with their names: the body itself, or each part of a multipart form.
async fn read_images(app: &Shared, q: &ClassifyQuery, req: Request) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut named: Vec<(String, Vec<u8>)> = Vec::new();
    if multipart {
        // axum's own rejections (multipart syntax, body limit) keep their status and text.
        let mut form = Multipart::from_request(req, app).await.map_err(|e| error(e.status(), e.body_text()))?;
        while let Some(field) = form.next_field().await.map_err(|e| error(e.status(), e.body_text()))? {
            too_many(app, named.len() + 1)?;
            let name = field.file_name().or(field.name()).unwrap_or("image").to_string();
            named.push((name, field.bytes().await.map_err(|e| error(e.status(), e.body_text()))?.to_vec()));
        }
    } else {
        let body = Bytes::from_request(req, app).await.map_err(|e| error(e.status(), e.body_text()))?;
        named.push((q.name.clone().unwrap_or_else(|| "image".into()), body.to_vec()));
    }
    if named.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "no image in the request"));
    }
    Ok(named)
}
