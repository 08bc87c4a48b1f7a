//! The demo on a few steps: it trains the demo recipe's network and writes every picture.

mod common;

use burn::tensor::Device;
use flowmatch::data::{DataOptions, DataSource, ImageSet, Split};
use flowmatch::demo::{self, DemoOptions};

#[test]
fn a_short_demo_writes_its_pictures() {
    let dir = common::temp_dir("demo");
    let data = ImageSet::load(&DataSource::Embedded, Split::Train, &DataOptions::default())
        .unwrap()
        .take(64);
    let options = DemoOptions {
        out: dir.clone(),
        steps: Some(2),
        classes: 10,
        seed: 0,
        data: "embedded".into(),
        sampling_steps: 2,
    };
    let config = demo::config(&options);
    assert_eq!(
        config.model.arch(),
        "resunet",
        "the demo trains the residual U-Net"
    );
    assert_eq!(config.model.num_classes(), Some(10));
    let report = demo::run(&options, &data, &Device::flex(), &mut ()).unwrap();
    assert_eq!(report.outcome.steps, 2);
    let size = |p: &std::path::Path| {
        let img = image::open(p).unwrap();
        (img.width(), img.height())
    };
    assert_eq!(size(&report.samples), (2 + 8 * 30, 2 + 8 * 30));
    assert_eq!(
        size(report.class_rows.as_ref().unwrap()),
        (2 + 10 * 30, 2 + 10 * 30)
    );
    assert!(report.trajectory.is_file() && report.gif.is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}
