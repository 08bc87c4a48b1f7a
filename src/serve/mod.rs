//! `flowmatch serve`: a local web page to generate samples and watch the flow from noise to
//! image, and the HTTP API it uses (documented in the README).
//!
//! The HTTP stack is `tiny_http`: synchronous, with four small dependencies, so the build stays
//! short on two cores; a page on the local machine needs no async runtime. A few worker threads
//! take requests; each model is behind a mutex, so generations for one model run one at a
//! time (in arrival order) while other requests are answered. The page and its script are
//! embedded in the binary: it works offline.

pub mod api;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response};

use crate::checkpoint::{self, LoadedModel, Weights};
use crate::error::{Error, Result};
use crate::flow::scheduler::Parametrisation;
use crate::model::{Network, NetworkConfig};
use crate::pretrained::Pretrained;
use crate::sampling::solvers::TimeGrid;
use api::{BadRequest, ModelChoice, SampleRequest};

/// The page: HTML, CSS and script in one embedded file.
const PAGE: &str = include_str!("page.html");
/// Most loss points `/api/run` returns (longer logs are thinned evenly).
const MAX_LOSS_POINTS: usize = 2000;

/// Threads answering the requests of `flowmatch serve`.
pub const DEFAULT_WORKERS: usize = 4;

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Checkpoints to serve (each becomes a model named after its file, sampled with 50 steps
    /// unless it was made for fewer).
    pub checkpoints: Vec<PathBuf>,
    /// Models shipped with flowmatch to serve after them (named and sampled as shipped).
    pub shipped: Vec<&'static Pretrained>,
    /// Address to bind (127.0.0.1 unless told otherwise).
    pub host: String,
    /// Port (0: any free one).
    pub port: u16,
    /// A training run folder whose `metrics.jsonl` the page plots live.
    pub run: Option<PathBuf>,
    /// Threads answering requests.
    pub workers: usize,
}

struct Served {
    name: String,
    path: PathBuf,
    config: NetworkConfig,
    parameters: usize,
    model: Mutex<Network>,
    /// The path and prediction it was trained with (its output is turned into a velocity).
    trained: Parametrisation,
    /// The steps it is sampled with unless a request names them.
    steps: usize,
    /// The time grid it is sampled on.
    grid: TimeGrid,
}

struct State {
    models: Vec<Served>,
    run: Option<PathBuf>,
    device: Device,
}

/// A bound server, ready to answer.
pub struct Server {
    http: Arc<tiny_http::Server>,
    state: Arc<State>,
    workers: usize,
    url: String,
}

/// A model as `/api/models` lists it.
#[derive(Debug, Serialize)]
struct ModelInfo<'a> {
    name: &'a str,
    file: String,
    arch: &'a str,
    description: String,
    parameters: usize,
    classes: Option<usize>,
    shape: [usize; 3],
    /// Steps the page starts with (the model's own).
    steps: usize,
    /// Its time grid, in words.
    grid: String,
}

impl Server {
    /// Loads the checkpoints (EMA weights where they have them) and binds the address.
    pub fn bind(options: &ServeOptions, device: &Device) -> Result<Self> {
        if options.checkpoints.is_empty() && options.shipped.is_empty() {
            return Err(Error::invalid(
                "checkpoint",
                "give at least one --checkpoint or --pretrained",
            ));
        }
        let mut models: Vec<Served> = Vec::new();
        for path in &options.checkpoints {
            let loaded = checkpoint::load_weights(path, device, Weights::PreferEma)?;
            let stem = path
                .file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into_owned());
            // Two checkpoints called final.safetensors are told apart by their folder.
            let name = match models.iter().any(|m| m.name == stem) {
                false => stem,
                true => format!("{}-{}", parent_name(path), stem),
            };
            let steps = loaded
                .sampling_steps()
                .map_err(|e| Error::bad_file(path, e.to_string()))?;
            models.push(Served::new(
                name,
                path.clone(),
                loaded,
                steps,
                TimeGrid::Uniform,
            )?);
        }
        for shipped in &options.shipped {
            let (name, path) = (shipped.name.to_string(), shipped.label());
            let loaded = shipped.load(device)?;
            models.push(Served::new(
                name,
                path,
                loaded,
                shipped.steps,
                shipped.grid,
            )?);
        }
        let address = format!("{}:{}", options.host, options.port);
        let http = tiny_http::Server::http(&address)
            .map_err(|e| Error::invalid("address", format!("cannot listen on {address}: {e}")))?;
        let url = match http.server_addr() {
            tiny_http::ListenAddr::IP(addr) => format!("http://{addr}/"),
            #[allow(unreachable_patterns)]
            other => format!("http://{other:?}/"),
        };
        Ok(Server {
            http: Arc::new(http),
            state: Arc::new(State {
                models,
                run: options.run.clone(),
                device: device.clone(),
            }),
            workers: options.workers.max(1),
            url,
        })
    }

    /// The page's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The names of the served models, in order.
    pub fn model_names(&self) -> Vec<String> {
        self.state.models.iter().map(|m| m.name.clone()).collect()
    }

    /// Answers requests until the process ends.
    pub fn run(self) {
        let handles: Vec<_> = (0..self.workers)
            .map(|_| {
                let (http, state) = (self.http.clone(), self.state.clone());
                std::thread::spawn(move || {
                    for request in http.incoming_requests() {
                        handle(&state, request);
                    }
                })
            })
            .collect();
        for handle in handles {
            let _ = handle.join();
        }
    }
}

impl Served {
    fn new(
        name: String,
        path: PathBuf,
        loaded: LoadedModel,
        steps: usize,
        grid: TimeGrid,
    ) -> Result<Self> {
        let trained = loaded
            .parametrisation()
            .map_err(|e| Error::bad_file(&path, e.to_string()))?;
        let model = loaded.model;
        Ok(Served {
            name,
            path,
            config: model.config(),
            parameters: model.parameter_count(),
            model: Mutex::new(model),
            trained,
            steps,
            grid,
        })
    }
}

fn parent_name(path: &Path) -> String {
    path.parent()
        .and_then(|p| p.file_name())
        .map_or("model".into(), |s| s.to_string_lossy().into_owned())
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

fn json_error(status: u16, message: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::json!({ "error": message }).to_string();
    Response::from_data(body.into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

fn json<T: Serialize>(value: &T) -> Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::to_vec(value).expect("serialises");
    Response::from_data(body).with_header(header("Content-Type", "application/json"))
}

/// Answers one request. A client that went away is ignored (the write fails, nothing else is
/// affected), and a request that panics is answered 500 while the worker goes on serving.
fn handle(state: &State, request: Request) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let is_get = *request.method() == Method::Get;
    let response =
        std::panic::catch_unwind(AssertUnwindSafe(|| respond(state, is_get, path, query)))
            .unwrap_or_else(|_| {
                json_error(
                    500,
                    "the server failed on this request (a bug: please report it)",
                )
            });
    let _ = request.respond(response);
}

/// The response to a request for `path` with `query`.
fn respond(
    state: &State,
    is_get: bool,
    path: &str,
    query: &str,
) -> Response<std::io::Cursor<Vec<u8>>> {
    if !is_get {
        json_error(405, "only GET is served")
    } else {
        match path {
            "/" | "/index.html" => Response::from_data(PAGE.as_bytes().to_vec())
                .with_header(header("Content-Type", "text/html; charset=utf-8")),
            "/api/models" => json(&models(state)),
            "/api/sample" => generation(state, query, |model, trained, r, device| {
                api::sample_grid(model, trained, r, device).map(|grid| {
                    Response::from_data(grid.png)
                        .with_header(header("Content-Type", "image/png"))
                        .with_header(header("X-NFE", &grid.nfe.to_string()))
                        .with_header(header("X-Seconds", &format!("{:.3}", grid.seconds)))
                })
            }),
            "/api/trajectory" => generation(state, query, |model, trained, r, device| {
                api::trajectory(model, trained, r, device).map(|t| json(&t))
            }),
            "/api/run" => match &state.run {
                Some(dir) => match run_metrics(dir) {
                    Ok(value) => json(&value),
                    Err(e) => json_error(500, &e),
                },
                None => json_error(404, "no training run is served (start with --run DIR)"),
            },
            _ => json_error(404, &format!("no such page: {path}")),
        }
    }
}

fn models(state: &State) -> Vec<ModelInfo<'_>> {
    state
        .models
        .iter()
        .map(|m| ModelInfo {
            name: &m.name,
            file: m.path.display().to_string(),
            arch: m.config.arch(),
            description: m.config.describe(),
            parameters: m.parameters,
            classes: m.config.num_classes(),
            shape: m.config.image_shape(),
            steps: m.steps,
            grid: m.grid.to_string(),
        })
        .collect()
}

/// Validates a generation request and runs it on its model, one at a time per model.
fn generation(
    state: &State,
    query: &str,
    run: impl FnOnce(
        &Network,
        Parametrisation,
        &SampleRequest,
        &Device,
    ) -> std::result::Result<Response<std::io::Cursor<Vec<u8>>>, String>,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let served: Vec<ModelChoice> = state
        .models
        .iter()
        .map(|m| ModelChoice {
            name: m.name.clone(),
            classes: m.config.num_classes(),
            steps: m.steps,
            grid: m.grid,
        })
        .collect();
    let request = match SampleRequest::parse(query, &served) {
        Ok(r) => r,
        Err(BadRequest(message)) => return json_error(400, &message),
    };
    let served = &state.models[request.model];
    // A generation that panicked leaves the model as it was: keep serving it.
    let model = served.model.lock().unwrap_or_else(|p| p.into_inner());
    match run(&model, served.trained, &request, &state.device) {
        Ok(response) => response,
        Err(message) => json_error(500, &message),
    }
}

/// The loss log of a training run: `{"steps": [...], "loss": [...], "epochs": [...]}`, read
/// afresh on every request (the run may be writing it); a partial last line is skipped.
fn run_metrics(dir: &Path) -> std::result::Result<serde_json::Value, String> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut steps, mut losses, mut epochs) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match (
            value["step"].as_u64(),
            value["loss"].as_f64(),
            value["mean_loss"].as_f64(),
        ) {
            (Some(step), Some(loss), _) => {
                steps.push(step);
                losses.push(loss);
            }
            (Some(step), None, Some(mean)) => epochs.push(serde_json::json!([step, mean])),
            _ => {}
        }
    }
    let stride = steps.len().div_ceil(MAX_LOSS_POINTS).max(1);
    let keep = |i: &usize| i.is_multiple_of(stride) || *i + 1 == steps.len();
    let thinned: Vec<usize> = (0..steps.len()).filter(keep).collect();
    Ok(serde_json::json!({
        "run": dir.display().to_string(),
        "steps": thinned.iter().map(|&i| steps[i]).collect::<Vec<_>>(),
        "loss": thinned.iter().map(|&i| losses[i]).collect::<Vec<_>>(),
        "epochs": epochs,
    }))
}
