//! Fuzz-style tests of the parsers a user's files go through: the IDX reader, the safetensors
//! checkpoint / tensor loader and the TOML training configuration. Thousands of mutated and
//! truncated inputs (random byte flips, cut lengths, header fields claiming huge sizes), each of
//! which must end in `Ok` or a typed error: no panic, and no single allocation larger than the
//! input justifies (a counting allocator watches the parsing thread).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;
use std::path::Path;

use burn::tensor::Device;
use flowmatch::checkpoint::{self, Weights};
use flowmatch::data::idx::parse_idx;
use flowmatch::model::UNetConfig;
use flowmatch::tensor_file::TensorFile;
use flowmatch::training::TrainConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::idx_bytes;

/// The system allocator, recording the largest single request made while a thread is armed.
struct Watch;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    if ARMED.with(Cell::get) {
        LARGEST.with(|l| l.set(l.get().max(size)));
    }
}

#[global_allocator]
static GLOBAL: Watch = Watch;

/// Runs `f` and returns its result with the largest single allocation this thread made in it.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, LARGEST.with(Cell::get))
}

/// Slack for fixed-size bookkeeping (error strings, maps, small vectors).
const SLACK: usize = 64 << 10;

/// One random mutation of `base`: byte flips, a cut, a splice of `0xff` bytes, or a huge
/// number written over a header field at one of `fields` (offset, width in bytes).
fn mutate(base: &[u8], fields: &[(usize, usize)], rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = base.to_vec();
    match rng.random_range(0..5) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => bytes.truncate(rng.random_range(0..base.len())),
        2 => {
            let i = rng.random_range(0..bytes.len());
            let n = rng.random_range(1..16).min(bytes.len() - i);
            bytes[i..i + n].fill(0xff);
        }
        3 if !fields.is_empty() => {
            let (at, width) = fields[rng.random_range(0..fields.len())];
            let huge: u64 = [1 << 40, u64::MAX, 1 << 31, u32::MAX as u64][rng.random_range(0..4)];
            let end = (at + width).min(bytes.len());
            let field = &mut bytes[at.min(end)..end];
            let be = huge.to_be_bytes();
            let len = field.len();
            field.copy_from_slice(&be[8 - len..]);
        }
        _ => {
            // Both: a flip near the start (the header) and a cut.
            let i = rng.random_range(0..bytes.len().min(64));
            bytes[i] = rng.random();
            bytes.truncate(rng.random_range(1..=base.len()));
        }
    }
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).unwrap();
    gz.finish().unwrap()
}

/// What a gzip stream really decompresses to (capped), to know what it justifies.
fn gunzipped_len(bytes: &[u8]) -> usize {
    let mut out = Vec::new();
    let _ = flate2::read::GzDecoder::new(bytes)
        .take(64 << 20)
        .read_to_end(&mut out);
    out.len()
}

#[test]
fn idx_reader_survives_mutated_headers_and_data() {
    let mut rng = StdRng::seed_from_u64(11);
    let pixels: Vec<u8> = (0..5 * 28 * 28).map(|i| (i % 251) as u8).collect();
    let images = idx_bytes(&[5, 28, 28], &pixels);
    let labels = idx_bytes(&[5], &[0, 1, 2, 3, 4]);
    let bases = [images.clone(), gzip(&images), labels.clone(), gzip(&labels)];
    // The magic's rank byte and each dimension of the raw forms.
    let fields = [(3, 1), (4, 4), (8, 4), (12, 4)];
    let (mut ok, mut rejected) = (0, 0);
    for round in 0..4000 {
        let base = &bases[round % bases.len()];
        let raw = round % 2 == 0;
        let input = mutate(base, if raw { &fields } else { &[] }, &mut rng);
        let justified = input.len().max(gunzipped_len(&input));
        let (result, largest) = largest_allocation(|| parse_idx(&input));
        assert!(
            largest <= 2 * justified + SLACK,
            "round {round}: allocated {largest} bytes for a {}-byte input",
            input.len()
        );
        match result {
            Ok(array) => {
                let declared: usize = array.dims.iter().product();
                assert_eq!(
                    array.data.len(),
                    declared,
                    "round {round}: {:?}",
                    array.dims
                );
                ok += 1;
            }
            Err(reason) => {
                assert!(!reason.is_empty());
                rejected += 1;
            }
        }
    }
    // Both outcomes occur, so the mutations reach past the first check.
    println!("IDX: ok {ok}, rejected {rejected}");
    assert!(ok > 0 && rejected > 1000, "ok {ok}, rejected {rejected}");

    // A header that claims 2^40 bytes of images is refused before anything is allocated.
    let claim = idx_bytes(&[1 << 20, 1 << 10, 1 << 10], &[0; 16]);
    let (result, largest) = largest_allocation(|| parse_idx(&claim));
    assert!(result.unwrap_err().contains("implausibly large"));
    assert!(largest <= SLACK, "{largest}");
}

/// Offsets of the numbers in a safetensors header: the 8-byte length, then every digit run in
/// the JSON (shapes and data offsets), as (offset, width) fields for [`mutate`].
fn safetensors_fields(bytes: &[u8]) -> Vec<(usize, usize)> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut fields = vec![(0, 8)];
    let json = &bytes[8..8 + header_len];
    let mut i = 0;
    while i < json.len() {
        if json[i].is_ascii_digit() {
            let start = i;
            while i < json.len() && json[i].is_ascii_digit() {
                i += 1;
            }
            fields.push((8 + start, i - start));
        }
        i += 1;
    }
    fields
}

#[test]
fn checkpoint_loader_survives_mutated_files() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity-small/weights.safetensors");
    let base = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    // Digits rewritten as digits keep the JSON valid and make it claim other shapes and offsets.
    let digit_fields = safetensors_fields(&base);
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(12);
    let (mut loaded, mut rejected) = (0, 0);
    for round in 0..1500 {
        let mut input = match round % 3 {
            // Mutations aimed at the header, where the structure is.
            0 => {
                let mut head = mutate(&base[..8 + header_len], &[(0, 8)], &mut rng);
                head.extend_from_slice(&base[(8 + header_len).min(base.len())..]);
                head
            }
            1 => mutate(&base, &[], &mut rng),
            _ => base.clone(),
        };
        if round % 3 == 2 {
            // A number of the JSON header replaced by another of the same width.
            let (at, width) = digit_fields[1 + rng.random_range(0..digit_fields.len() - 1)];
            for b in &mut input[at..at + width] {
                *b = b'0' + rng.random_range(0..10);
            }
            if rng.random_bool(0.3) {
                input[at] = b'9';
            }
        }
        let (result, largest) = largest_allocation(|| {
            TensorFile::from_bytes(&input, &path).and_then(|file| {
                checkpoint::model_from_file(&file, &path, &device, Weights::PreferEma)
            })
        });
        assert!(
            largest <= 2 * input.len() + SLACK,
            "round {round}: allocated {largest} bytes for a {}-byte input",
            input.len()
        );
        match result {
            Ok(model) => {
                assert_eq!(
                    model.model.config(),
                    UNetConfig::with_widths([8, 16, 32]).into()
                );
                loaded += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("weights.safetensors"), "{e}");
                rejected += 1;
            }
        }
    }
    println!("checkpoints: loaded {loaded}, rejected {rejected}");
    assert!(
        loaded > 0 && rejected > 500,
        "loaded {loaded}, rejected {rejected}"
    );

    // A header length claiming 2^40 bytes.
    let mut claim = base.clone();
    claim[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (result, largest) = largest_allocation(|| TensorFile::from_bytes(&claim, &path));
    assert!(result.is_err());
    assert!(largest <= SLACK, "{largest}");
}

#[test]
fn training_configuration_reader_survives_mutated_toml() {
    let base = TrainConfig::default().to_toml();
    assert!(toml::from_str::<TrainConfig>(&base).is_ok());
    let bytes = base.as_bytes();
    let numbers: Vec<(usize, usize)> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| b.is_ascii_digit())
        .map(|(i, _)| (i, 1))
        .collect();
    let mut rng = StdRng::seed_from_u64(13);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..3000 {
        let mut input = mutate(bytes, &[], &mut rng);
        if round % 2 == 0 {
            // Digits turned into long runs: huge widths, batch sizes, steps, seeds.
            let (at, _) = numbers[rng.random_range(0..numbers.len())];
            let run = "9".repeat(rng.random_range(1..30));
            input.splice(at.min(input.len())..at.min(input.len()), run.bytes());
        }
        let text = String::from_utf8_lossy(&input).into_owned();
        let (result, largest) = largest_allocation(|| {
            toml::from_str::<TrainConfig>(&text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|_| c).map_err(|e| e.to_string()))
        });
        assert!(
            largest <= 8 * text.len() + SLACK,
            "round {round}: {largest} bytes"
        );
        match result {
            Ok(config) => {
                // What validation lets through is a network one can build.
                assert!(config.model.validate().is_ok());
                assert!(config.batch_size <= flowmatch::training::MAX_BATCH);
                accepted += 1;
            }
            Err(message) => {
                assert!(!message.is_empty());
                rejected += 1;
            }
        }
    }
    println!("TOML: accepted {accepted}, rejected {rejected}");
    assert!(
        accepted > 0 && rejected > 500,
        "accepted {accepted}, rejected {rejected}"
    );
}
