//! The HTTP API's requests: parsing and validating query parameters, and the generations they
//! ask for (a PNG grid, or the whole trajectory as JSON frames).

use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use burn::tensor::Device;
use serde::Serialize;

use crate::flow::scheduler::Parametrisation;
use crate::image_out::{self, Images};
use crate::model::Network;
use crate::sampling::guidance::Guided;
use crate::sampling::schedule::AsVelocity;
use crate::sampling::solvers::{Solver, TimeGrid, VelocityField, solve};
use crate::sampling::{
    ClassPlan, DEFAULT_STEPS, Generation, NoiseSource, Schedule, from_vec, generate, to_vec,
};

/// Most samples one request may ask for.
pub const MAX_SAMPLES: usize = 64;
/// Most solver steps one request may ask for.
pub const MAX_STEPS: usize = 200;
/// Largest guidance scale accepted.
pub const MAX_GUIDANCE: f32 = 20.0;

/// A bad request, answered with status 400 and `{"error": message}`.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest(pub String);

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    /// Index of the model in the server's list.
    pub model: usize,
    /// The class to draw (`None`: any, without labels).
    pub digit: Option<usize>,
    /// Guidance scale (with a digit).
    pub guidance: f32,
    /// Guidance only at times in `[A, B]` (`interval=A,B`; none: at every time).
    pub guidance_interval: Option<(f32, f32)>,
    /// Solver.
    pub solver: Solver,
    /// Steps of a fixed-step solver (the model's own unless the request names them).
    pub steps: usize,
    /// The time grid of those steps (the model's own).
    pub grid: TimeGrid,
    /// Samples.
    pub n: usize,
    /// Seed of the starting noise.
    pub seed: u64,
}

/// Splits a query string into decoded (key, value) pairs.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `%XX` and `+` decoding of a query component (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(a), Some(b)) => {
                    out.push(a * 16 + b);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `A,B` as a guidance interval (`0 <= A <= B <= 1`).
pub fn parse_interval(s: &str) -> Result<(f32, f32), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("guidance interval '{s}': give A,B (times: 0 data, 1 noise)"))?;
    let number = |v: &str| {
        v.trim()
            .parse::<f32>()
            .map_err(|_| format!("guidance interval '{s}': '{v}' is not a number"))
    };
    let interval = (number(a)?, number(b)?);
    crate::sampling::guidance::check_interval(interval).map_err(|e| e.to_string())?;
    Ok(interval)
}

/// A served model as requests are checked against it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChoice {
    /// Its name (`model=NAME`).
    pub name: String,
    /// Its classes, where conditional.
    pub classes: Option<usize>,
    /// The steps it is sampled with when a request names none.
    pub steps: usize,
    /// The time grid it is sampled on.
    pub grid: TimeGrid,
}

impl SampleRequest {
    /// Validates the query of a `/api/sample` or `/api/trajectory` request against the served
    /// `models` (their names, classes where conditional, and own samplers).
    pub fn parse(query: &str, models: &[ModelChoice]) -> Result<Self, BadRequest> {
        let bad = |m: String| BadRequest(m);
        let mut request = SampleRequest {
            model: 0,
            digit: None,
            guidance: 1.0,
            guidance_interval: None,
            solver: Solver::Euler,
            steps: DEFAULT_STEPS,
            grid: TimeGrid::Uniform,
            n: 16,
            seed: 0,
        };
        let mut model_given = false;
        let mut tol = 1e-3f32;
        let mut steps = None;
        for (key, value) in query_pairs(query) {
            let number = |what: &str| -> Result<f64, BadRequest> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| BadRequest(format!("{what} must be a number, not '{value}'")))
            };
            match key.as_str() {
                "model" => {
                    request.model =
                        models.iter().position(|m| m.name == value).ok_or_else(|| {
                            let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
                            bad(format!(
                                "unknown model '{value}' (served: {})",
                                names.join(", ")
                            ))
                        })?;
                    model_given = true;
                }
                "digit" | "class" => {
                    request.digit = match value.as_str() {
                        "" | "any" => None,
                        v => Some(v.parse::<usize>().map_err(|_| {
                            bad(format!("digit must be a class number or 'any', not '{v}'"))
                        })?),
                    }
                }
                "guidance" => request.guidance = number("guidance")? as f32,
                "interval" => {
                    request.guidance_interval = match value.as_str() {
                        "" | "all" => None,
                        v => Some(parse_interval(v).map_err(bad)?),
                    }
                }
                "solver" => {
                    request.solver = value.parse::<Solver>().map_err(|e| bad(e.to_string()))?
                }
                "tol" => tol = number("tol")? as f32,
                "steps" => steps = Some(integer(&value, "steps", 1, MAX_STEPS)?),
                "n" => request.n = integer(&value, "n", 1, MAX_SAMPLES)?,
                "seed" => {
                    request.seed = value
                        .parse::<u64>()
                        .map_err(|_| bad(format!("seed must be a whole number, not '{value}'")))?
                }
                other => return Err(bad(format!("unknown parameter '{other}'"))),
            }
        }
        if !model_given && models.len() > 1 {
            return Err(bad(
                "several models are served: say which with model=NAME".into()
            ));
        }
        if let Solver::Dopri5 { .. } = request.solver {
            if !(1e-6..=1.0).contains(&tol) {
                return Err(bad(format!("tol must be in [1e-6, 1], not {tol}")));
            }
            request.solver = Solver::Dopri5 {
                rtol: tol,
                atol: tol,
            };
        }
        if !(0.0..=MAX_GUIDANCE).contains(&request.guidance) {
            return Err(bad(format!(
                "guidance must be in [0, {MAX_GUIDANCE}], not {}",
                request.guidance
            )));
        }
        let chosen = models.get(request.model);
        request.steps = steps.or(chosen.map(|m| m.steps)).unwrap_or(DEFAULT_STEPS);
        request.grid = chosen.map_or(TimeGrid::Uniform, |m| m.grid);
        match (
            request.digit,
            models.get(request.model).and_then(|m| m.classes),
        ) {
            (Some(_), None) => {
                return Err(bad(
                    "this model is unconditional: leave digit out (or 'any')".into(),
                ));
            }
            (Some(d), Some(classes)) if d >= classes => {
                return Err(bad(format!(
                    "digit {d}: the model knows classes 0..{}",
                    classes - 1
                )));
            }
            (None, _) if request.guidance != 1.0 => {
                return Err(bad("guidance needs a digit".into()));
            }
            _ => {}
        }
        Ok(request)
    }

    fn plan(&self) -> ClassPlan {
        match self.digit {
            Some(d) => ClassPlan::Rows {
                classes: vec![d],
                per_class: self.n,
            },
            None => ClassPlan::Unconditional,
        }
    }

    /// Columns of the request's grid.
    pub fn columns(&self) -> usize {
        (self.n as f64).sqrt().ceil() as usize
    }
}

fn integer(value: &str, what: &str, low: usize, high: usize) -> Result<usize, BadRequest> {
    value
        .parse::<usize>()
        .ok()
        .filter(|v| (low..=high).contains(v))
        .ok_or_else(|| {
            BadRequest(format!(
                "{what} must be a whole number in {low}..={high}, not '{value}'"
            ))
        })
}

/// A generated grid: its PNG, the evaluations used and the time taken.
#[derive(Debug, Clone)]
pub struct Grid {
    /// The PNG bytes.
    pub png: Vec<u8>,
    /// Network evaluations.
    pub nfe: usize,
    /// Seconds of generation.
    pub seconds: f64,
}

fn grid_png(model: &Network, values: &[f32], cols: usize) -> Result<Vec<u8>, String> {
    let images = Images {
        pixels: values,
        shape: model.image_shape(),
    };
    image_out::png_bytes(&image_out::grid(images, cols, 1, 2))
}

/// The final samples of `request` as a PNG grid, from `model` trained with `trained` (its
/// output turned into a velocity).
pub fn sample_grid(
    model: &Network,
    trained: Parametrisation,
    request: &SampleRequest,
    device: &Device,
) -> Result<Grid, String> {
    let started = Instant::now();
    let mut values = Vec::new();
    let generation = Generation {
        solver: request.solver,
        steps: request.steps,
        grid: request.grid,
        guidance: request.guidance,
        chunk: MAX_SAMPLES,
        guidance_interval: request.guidance_interval,
        schedule: Schedule {
            trained,
            along: None,
        },
    };
    let stats = generate(
        model,
        request.n,
        &request.plan(),
        &mut NoiseSource::seeded(request.seed),
        &generation,
        device,
        |_, v| {
            values.extend(v);
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Grid {
        png: grid_png(model, &values, request.columns())?,
        nfe: stats.nfe_per_chunk.iter().sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every state of a generation, for the page's animation of the flow.
#[derive(Debug, Clone, Serialize)]
pub struct TrajectoryReply {
    /// `[n, channels, height, width]`.
    pub shape: [usize; 4],
    /// Columns of each frame's grid.
    pub columns: usize,
    /// The time of each frame, from 1 (noise) to 0 (data).
    pub times: Vec<f32>,
    /// Each frame as a base64 PNG grid of the `n` samples (1-pixel tiles, 2-pixel border).
    pub frames: Vec<String>,
    /// Network evaluations used.
    pub nfe: usize,
    /// Seconds of generation.
    pub seconds: f64,
    /// Guidance scale used.
    pub guidance: f32,
    /// The solver's name.
    pub solver: String,
}

/// The trajectory of `request`: one frame per solver state, from `model` trained with
/// `trained` (its output turned into a velocity).
pub fn trajectory(
    model: &Network,
    trained: Parametrisation,
    request: &SampleRequest,
    device: &Device,
) -> Result<TrajectoryReply, String> {
    let started = Instant::now();
    let [c, h, w] = model.image_shape();
    let mut noise = NoiseSource::seeded(request.seed);
    let x1 = from_vec(
        noise.take(request.n, c * h * w),
        [request.n, c, h, w],
        device,
    );
    let mut states: Vec<(f32, Vec<f32>)> = Vec::new();
    let record = |_: usize, t: f32, x: &burn::tensor::Tensor<4>| states.push((t, to_vec(x)));
    let guided = match request.digit {
        Some(d) => Some(
            Guided::new(model, &vec![d; request.n], request.guidance)
                .and_then(|g| g.with_interval(request.guidance_interval))
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let output: &dyn VelocityField<4> = match &guided {
        Some(guided) => guided,
        None => model,
    };
    let field = AsVelocity::new(output, trained);
    let (solver, steps) = (request.solver, request.steps);
    let solution = solve(&field, solver, x1, steps, request.grid, record);
    states.push((0.0, to_vec(&solution.x)));
    let columns = request.columns();
    let frames = states
        .iter()
        .map(|(_, v)| grid_png(model, v, columns).map(|png| BASE64.encode(png)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrajectoryReply {
        shape: [request.n, c, h, w],
        columns,
        times: states.iter().map(|(t, _)| *t).collect(),
        frames,
        nfe: solution.nfe,
        seconds: started.elapsed().as_secs_f64(),
        guidance: request.guidance,
        solver: request.solver.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_intervals_parse_and_bad_ones_are_refused() {
        let models = [ModelChoice {
            name: "m".into(),
            classes: Some(10),
            steps: 10,
            grid: TimeGrid::Shifted(3.0),
        }];
        let parse = |q: &str| SampleRequest::parse(q, &models);
        let ok = parse("digit=3&guidance=2&interval=0%2C0.7").unwrap();
        assert_eq!(ok.guidance_interval, Some((0.0, 0.7)));
        // The model's own sampler unless the request names the steps.
        assert_eq!((ok.steps, ok.grid), (10, TimeGrid::Shifted(3.0)));
        assert_eq!(parse("steps=30").unwrap().steps, 30);
        assert_eq!(
            parse("digit=3&interval=all").unwrap().guidance_interval,
            None
        );
        for bad in [
            "interval=0.9%2C0.1",
            "interval=0.5",
            "interval=a%2Cb",
            "interval=0%2C2",
        ] {
            let error = parse(&format!("digit=3&{bad}")).unwrap_err().0;
            assert!(error.contains("guidance interval"), "{bad}: {error}");
        }
    }

    #[test]
    fn queries_decode() {
        assert_eq!(
            query_pairs("a=1&b=x%20y+z&c"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), String::new())
            ]
        );
        assert_eq!(query_pairs("a=%zz%4"), vec![("a".into(), "%zz%4".into())]);
    }
}
