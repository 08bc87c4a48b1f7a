//! Parity with the reference PyTorch model: same weights, same noise, same Euler result.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use flowmatch::checkpoint;
use flowmatch::model::UNetConfig;
use flowmatch::solver::euler;
use flowmatch::tensor_file::TensorFile;

fn parity_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parity/seed-unet")
}

fn tensor4(file: &TensorFile, name: &str, path: &Path, device: &Device) -> Tensor<4> {
    let t = file.get(name, path).unwrap();
    let shape: [usize; 4] = t.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(t.values.clone(), shape), device)
}

fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn euler_reproduces_the_reference_outputs() {
    let device = Device::flex();
    let dir = parity_dir();
    let loaded = checkpoint::load(&dir.join("weights.safetensors"), &device).unwrap();
    assert_eq!(loaded.model.config(), UNetConfig::REFERENCE);
    let cases_path = dir.join("cases.safetensors");
    let cases = TensorFile::read(&cases_path).unwrap();
    let x1 = tensor4(&cases, "x1", &cases_path, &device);
    for (steps, name) in [(1, "x0_steps1"), (10, "x0_steps10")] {
        let expected = tensor4(&cases, name, &cases_path, &device);
        let solution = euler(&loaded.model, x1.clone(), steps, |_, _, _| {});
        assert_eq!(solution.nfe, steps);
        let err = max_abs_diff(solution.x, expected);
        println!("{name}: max abs error {err:e}");
        assert!(err <= 1e-3, "{name}: max abs error {err} > 1e-3");
    }
}

#[test]
fn checkpoint_round_trip_keeps_pytorch_names_and_values() {
    let device = Device::flex();
    let path = parity_dir().join("weights.safetensors");
    let original = TensorFile::read(&path).unwrap();
    let loaded = checkpoint::load(&path, &device).unwrap();
    let out = std::env::temp_dir().join(format!(
        "flowmatch-roundtrip-{}.safetensors",
        std::process::id()
    ));
    checkpoint::save(&loaded.model, None, None, Default::default(), &out).unwrap();
    let saved = TensorFile::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_eq!(saved.tensors.len(), 54);
    for (name, tensor) in &original.tensors {
        let copy = &saved.tensors[name];
        assert_eq!(copy.shape, tensor.shape, "{name}");
        assert_eq!(copy.values, tensor.values, "{name}");
    }
}
