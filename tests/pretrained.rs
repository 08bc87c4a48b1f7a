//! The shipped models: each file's hash and a few finite samples; `mnist-digits` guided to each
//! digit, checked with the pinned classifier; `--pretrained` on the command line, `serve` with
//! no model given, `flowmatch models`; `export` to float32 and float16.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use burn::tensor::Device;

use flowmatch::checkpoint::{self, Weights};
use flowmatch::data::download::sha256_hex;
use flowmatch::evaluation::classifier::{Classifier, argmax, embed};
use flowmatch::model::VelocityModel;
use flowmatch::pretrained::{self, MODELS};
use flowmatch::sampling::{ClassPlan, Generation, NoiseSource, generate, sample, solvers::Solver};

use common::{TINY_NET, assert_clean_error, assert_success, run, s, temp_dir};

#[test]
fn every_shipped_file_has_its_hash_and_samples_finite_images() {
    let device = Device::flex();
    assert!(!MODELS.is_empty());
    for shipped in MODELS {
        assert_eq!(sha256_hex(shipped.bytes().unwrap()), shipped.sha256);
        assert!(
            shipped.size() <= 5_300_000,
            "{}: {} bytes",
            shipped.name,
            shipped.size()
        );
        let model = shipped.load(&device).unwrap().model;
        let x = sample(&model, 3, Solver::Euler, shipped.steps, 0, &device).unwrap();
        assert_eq!(x.dims(), [3, 1, 28, 28]);
        let values = x.into_data().try_to_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{}", shipped.name);
        // Images, not noise: most pixels near the ends of [-1, 1] (a digit on a background).
        let decided = values.iter().filter(|v| v.abs() > 0.7).count();
        assert!(decided * 2 > values.len(), "{}: {decided}", shipped.name);
    }
}

#[test]
fn mnist_digits_guided_to_each_digit_draws_that_digit() {
    let device = Device::flex();
    let model = pretrained::find("mnist-digits")
        .unwrap()
        .load(&device)
        .unwrap()
        .model;
    assert_eq!(VelocityModel::<4>::num_classes(&model), Some(10));
    let per_class = 10;
    let plan = ClassPlan::Rows {
        classes: (0..10).collect(),
        per_class,
    };
    let generation = Generation {
        guidance: 2.0,
        ..Generation::euler(10)
    };
    let mut pixels = Vec::new();
    generate(
        &model,
        10 * per_class,
        &plan,
        &mut NoiseSource::seeded(0),
        &generation,
        &device,
        |_, values| {
            pixels.extend(values);
            Ok(())
        },
    )
    .unwrap();
    let (classifier, _) = Classifier::pinned(&device).unwrap();
    let probs = embed(&classifier, &pixels, &device).probs;
    let mut right = [0usize; 10];
    for (i, p) in probs.iter().enumerate() {
        if argmax(p) == i / per_class {
            right[i / per_class] += 1;
        }
    }
    let total: usize = right.iter().sum();
    assert!(total >= 95, "{total} of 100 the asked digit: {right:?}");
    assert!(right.iter().all(|&r| r >= 8), "per digit: {right:?}");
}

#[test]
fn the_command_line_takes_pretrained_models() {
    let dir = temp_dir("pretrained-cli");
    let cache = dir.join("cache");
    let with_cache = |args: &[&str]| {
        common::flowmatch()
            .env("FLOWMATCH_CACHE", &cache)
            .args(args)
            .output()
            .unwrap()
    };
    let name = MODELS[0].name;
    let grid = dir.join("g.png");
    let out = with_cache(&[
        "sample",
        "--pretrained",
        name,
        "--n",
        "4",
        "--steps",
        "2",
        "--out",
        s(&grid),
    ]);
    assert_success(&out);
    assert!(image::open(&grid).is_ok());
    // The copy in the cache is checked: a damaged one is written again.
    let copy = std::fs::read_dir(cache.join("models"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join(format!("{name}.safetensors"));
    std::fs::write(&copy, b"damaged").unwrap();
    let out = with_cache(&["info", "--pretrained", name]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("parameters"));
    assert_eq!(sha256_hex(&std::fs::read(&copy).unwrap()), MODELS[0].sha256);

    let out = with_cache(&["models"]);
    assert_success(&out);
    let listing = String::from_utf8_lossy(&out.stdout);
    for shipped in MODELS {
        assert!(listing.contains(shipped.name) && listing.contains(shipped.sha256));
    }

    // Without --steps (and --time-grid) a shipped model is sampled as its card says.
    for (shipped, said) in [
        ("mnist", "10 steps (time grid shifted by 3), NFE 10,"),
        ("mnist-1step", "1 steps, NFE 1,"),
    ] {
        let out = with_cache(&[
            "sample",
            "--pretrained",
            shipped,
            "--n",
            "2",
            "--out",
            s(&grid),
        ]);
        assert_success(&out);
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains(said), "{shipped}: {printed}");
    }

    let out = with_cache(&["sample", "--pretrained", "nope", "--out", s(&grid)]);
    assert_clean_error(&out, &["nope", name]);
    let out = run(&["sample", "--out", s(&grid)]);
    assert_clean_error(&out, &["--checkpoint"]);
    let fixture = common::fixture("weights.safetensors");
    let out = run(&[
        "sample",
        "--pretrained",
        name,
        "--checkpoint",
        s(&fixture),
        "--out",
        s(&grid),
    ]);
    assert_clean_error(&out, &["--pretrained"]);
}

#[test]
fn serve_with_no_model_serves_the_shipped_ones() {
    let dir = temp_dir("pretrained-serve");
    let mut child = common::flowmatch()
        .env("FLOWMATCH_CACHE", dir.join("cache"))
        .args(["serve", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let url = line
        .split(" on ")
        .nth(1)
        .map(|u| u.split(' ').next().unwrap());
    let result = std::panic::catch_unwind(|| {
        for shipped in MODELS {
            assert!(line.contains(shipped.name), "{line}");
        }
        let url = url.unwrap_or_else(|| panic!("no address in {line}"));
        let mut body = Vec::new();
        ureq::get(format!("{}/api/models", url.trim_end_matches('/')))
            .call()
            .unwrap()
            .into_body()
            .into_reader()
            .read_to_end(&mut body)
            .unwrap();
        let models: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(models.as_array().unwrap().len(), MODELS.len());
        // Each is offered with its own sampler, which a request without steps gets.
        for (served, shipped) in models.as_array().unwrap().iter().zip(MODELS) {
            assert_eq!(served["name"], shipped.name);
            assert_eq!(served["steps"], shipped.steps);
            assert_eq!(served["grid"], shipped.grid.to_string());
        }
        let one_step = ureq::get(format!(
            "{}/api/sample?model=mnist-1step&n=1",
            url.trim_end_matches('/')
        ))
        .call()
        .unwrap();
        assert_eq!(one_step.headers().get("X-NFE").unwrap(), "1");
    });
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap();
}

#[test]
fn export_keeps_the_ema_and_float16_samples_close_to_float32() {
    let dir = temp_dir("export");
    let device = Device::flex();
    // A checkpoint with raw weights, an EMA and optimiser state: a short training run.
    let run_dir = dir.join("run");
    let rest = ["--steps", "4", "--ema-decay", "0.9", "--out", s(&run_dir)];
    let train = run(&[&["train"][..], &TINY_NET, &rest].concat());
    assert_success(&train);
    let checkpoint = dir.join("run/last.safetensors");
    for (flag, out) in [
        (None, "m32.safetensors"),
        (Some("--f16"), "m16.safetensors"),
    ] {
        let out = dir.join(out);
        let mut args = vec![
            "export",
            "--checkpoint",
            s(&checkpoint),
            "--out",
            s(&out),
            "--check-steps",
            "3",
        ];
        args.extend(flag);
        let result = run(&args);
        assert_success(&result);
        assert!(String::from_utf8_lossy(&result.stdout).contains("on average"));
        let exported = checkpoint::load_weights(&out, &device, Weights::Raw).unwrap();
        let ema = checkpoint::load_weights(&checkpoint, &device, Weights::PreferEma).unwrap();
        assert!(ema.is_ema && !exported.is_ema);
        let difference =
            flowmatch::sampling::sample_difference(&ema.model, &exported.model, 8, 3, 0, &device)
                .unwrap();
        match flag {
            None => assert_eq!(difference.max, 0.0),
            Some(_) => assert!(difference.mean < 1e-3, "{difference:?}"),
        }
    }
    let sizes: Vec<u64> = ["m32", "m16", "run/last"]
        .iter()
        .map(|f| {
            std::fs::metadata(dir.join(format!("{f}.safetensors")))
                .unwrap()
                .len()
        })
        .collect();
    // Float16 halves the tensors (the metadata stays); the export drops the raw weights and
    // the optimiser state.
    assert!(
        sizes[1] * 100 < sizes[0] * 55 && sizes[0] * 2 < sizes[2],
        "{sizes:?}"
    );
    // An export never replaces the checkpoint it reads.
    let out = run(&[
        "export",
        "--checkpoint",
        s(&checkpoint),
        "--out",
        s(&checkpoint),
    ]);
    assert_clean_error(&out, &["is the input"]);
}
