//! The field's toolbox from the command line: a model trained on another scheduler and
//! prediction records them and samples through them; re-timing and guidance intervals are
//! taken by `sample`; bad values are clear errors.

mod common;

use common::{TINY_NET, assert_clean_error, assert_success, run as flowmatch, s, temp_dir};
use flowmatch::checkpoint;
use flowmatch::flow::scheduler::{Parametrisation, Prediction, Scheduler};

#[test]
fn schedulers_predictions_retiming_and_guidance_intervals() {
    let dir = temp_dir("toolbox");
    let run = dir.join("run");
    let train = [
        "--epochs",
        "1",
        "--classes",
        "10",
        "--scheduler",
        "cosine",
        "--prediction",
        "data",
        "--out",
        s(&run),
    ];
    assert_success(&flowmatch(&[&["train"], &TINY_NET[..], &train].concat()));
    let ckpt = run.join("final.safetensors");
    let loaded = checkpoint::load(&ckpt, &burn::tensor::Device::flex()).unwrap();
    let want = Parametrisation {
        scheduler: Scheduler::Cosine,
        prediction: Prediction::Data,
    };
    assert_eq!(loaded.parametrisation().unwrap(), want);

    let sample = |extra: &[&str], name: &str| {
        let out = dir.join(name);
        let args = [
            "sample",
            "--checkpoint",
            s(&ckpt),
            "--n",
            "4",
            "--steps",
            "4",
            "--out",
            s(&out),
        ];
        (flowmatch(&[&args[..], extra].concat()), out)
    };
    for (extra, name) in [
        (&[][..], "plain.png"),
        (&["--scheduler", "linear"][..], "retimed.png"),
        (
            &[
                "--digits",
                "0-2",
                "--guidance",
                "2",
                "--guidance-interval",
                "0.2,0.7",
            ][..],
            "interval.png",
        ),
    ] {
        let (out, png) = sample(extra, name);
        assert_success(&out);
        assert!(png.is_file(), "{name}");
    }
    // Re-timing changes the samples; an interval covering every time is guidance everywhere.
    assert_ne!(
        std::fs::read(dir.join("plain.png")).unwrap(),
        std::fs::read(dir.join("retimed.png")).unwrap()
    );
    let everywhere = |extra: &[&str], name: &str| {
        let mut args = vec!["--digits", "0-2", "--guidance", "2"];
        args.extend_from_slice(extra);
        let (out, png) = sample(&args, name);
        assert_success(&out);
        std::fs::read(png).unwrap()
    };
    assert_eq!(
        everywhere(&[], "all.png"),
        everywhere(&["--guidance-interval", "0,1"], "all-interval.png")
    );

    // The trajectory follows the trained path or another one, guided on an interval or not.
    for (extra, name) in [
        (&[][..], "strip"),
        (&["--scheduler", "linear"][..], "strip-linear"),
        (
            &[
                "--digit",
                "1",
                "--guidance",
                "2",
                "--guidance-interval",
                "0,0.7",
            ][..],
            "strip-interval",
        ),
        (&["--digit", "1", "--guidance", "2"][..], "strip-guided"),
    ] {
        let (strip, gif) = (
            dir.join(format!("{name}.png")),
            dir.join(format!("{name}.gif")),
        );
        let args = [
            "trajectory",
            "--checkpoint",
            s(&ckpt),
            "--n",
            "2",
            "--steps",
            "4",
            "--out",
            s(&strip),
            "--gif",
            s(&gif),
        ];
        assert_success(&flowmatch(&[&args[..], extra].concat()));
        assert!(strip.is_file() && gif.is_file(), "{name}");
    }
    // Guidance on an interval is not guidance everywhere; guidance needs a class.
    assert_ne!(
        std::fs::read(dir.join("strip-interval.png")).unwrap(),
        std::fs::read(dir.join("strip-guided.png")).unwrap()
    );
    let (x_png, x_gif) = (dir.join("x.png"), dir.join("x.gif"));
    let unguided = [
        "trajectory",
        "--checkpoint",
        s(&ckpt),
        "--guidance",
        "2",
        "--out",
        s(&x_png),
        "--gif",
        s(&x_gif),
    ];
    assert_clean_error(&flowmatch(&unguided), &["--digit"]);
    let served = flowmatch::serve::ServeOptions {
        checkpoints: vec![ckpt.clone()],
        shipped: vec![],
        host: "127.0.0.1".into(),
        port: 0,
        run: None,
        workers: 1,
    };
    // serve turns the data prediction into a velocity, on the page as in `sample`.
    let server = flowmatch::serve::Server::bind(&served, &burn::tensor::Device::flex()).unwrap();
    let url = server.url().trim_end_matches('/').to_string();
    std::thread::spawn(move || server.run());
    for api in ["sample", "trajectory"] {
        let reply = ureq::get(format!(
            "{url}/api/{api}?model=final&digit=1&guidance=2&n=2&steps=3"
        ))
        .call()
        .unwrap();
        assert_eq!(reply.status().as_u16(), 200, "{api}");
    }

    let (out, _) = sample(
        &["--digits", "0-2", "--guidance-interval", "0.8,0.2"],
        "bad.png",
    );
    assert_clean_error(&out, &["guidance interval", "0.8,0.2"]);
    let (out, _) = sample(&["--scheduler", "polynomial:0"], "bad.png");
    assert_clean_error(&out, &["polynomial"]);
    let bad_run = dir.join("bad");
    let bad = [
        "--epochs",
        "1",
        "--scheduler",
        "cosine",
        "--stable-target",
        "64",
        "--out",
        s(&bad_run),
    ];
    assert_clean_error(
        &flowmatch(&[&["train"], &TINY_NET[..], &bad].concat()),
        &["stable target"],
    );

    // A one-step model from scratch, without a JVP, samples in one evaluation.
    let split_run = dir.join("split");
    let split = [
        "--epochs",
        "1",
        "--objective",
        "split-mean-flow",
        "--out",
        s(&split_run),
    ];
    assert_success(&flowmatch(&[&["train"], &TINY_NET[..], &split].concat()));
    let one = dir.join("one.png");
    let ckpt = split_run.join("final.safetensors");
    let args = [
        "sample",
        "--checkpoint",
        s(&ckpt),
        "--n",
        "4",
        "--steps",
        "1",
        "--out",
        s(&one),
    ];
    let out = flowmatch(&args);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 NFE") || one.is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}
