//! CIFAR-10, binary version: the reader of its batch files and its verified download.
//!
//! Each `.bin` batch holds records of 3,073 bytes: a label byte (0-9), then the 32x32 image's
//! 1,024 red values (row-major), 1,024 green, 1,024 blue — already the planar layout flowmatch
//! packs. Training is `data_batch_1.bin` to `data_batch_5.bin` (50,000 images), the held-out
//! split `test_batch.bin` (10,000).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::download::{fetch_verified_to, sha256_file};
use super::{ImageSet, Split};
use crate::error::{Error, Result};

/// Bytes of one record.
pub const RECORD: usize = 1 + 3 * 32 * 32;
/// The class names, in label order (`batches.meta.txt`).
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// The sub-folder the archive extracts to.
pub const BATCHES_DIR: &str = "cifar-10-batches-bin";

/// Where CIFAR-10 is downloaded from and what its files must hash to.
#[derive(Debug, Clone, Copy)]
pub struct RemoteCifar {
    /// Base addresses tried in order.
    pub mirrors: &'static [&'static str],
    /// The archive's file name.
    pub archive: &'static str,
    /// SHA-256 of the archive.
    pub archive_sha256: &'static str,
    /// Size limit of the archive download.
    pub max_bytes: u64,
    /// Each batch file and its SHA-256.
    pub batches: [(&'static str, &'static str); 6],
}

/// CIFAR-10 from its home page at the University of Toronto (checksums from
/// `shared/docs/cifar10-sources.md`, as TensorFlow Datasets lists them).
pub const CIFAR10: RemoteCifar = RemoteCifar {
    mirrors: &["https://www.cs.toronto.edu/~kriz/"],
    archive: "cifar-10-binary.tar.gz",
    archive_sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    max_bytes: 200 << 20,
    batches: [
        (
            "data_batch_1.bin",
            "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
        ),
        (
            "data_batch_2.bin",
            "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
        ),
        (
            "data_batch_3.bin",
            "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
        ),
        (
            "data_batch_4.bin",
            "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
        ),
        (
            "data_batch_5.bin",
            "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
        ),
        (
            "test_batch.bin",
            "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
        ),
    ],
};

/// The folder holding the batches: `dir` itself or its `cifar-10-batches-bin`.
pub fn batches_folder(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join(BATCHES_DIR)]
        .into_iter()
        .find(|d| d.join("data_batch_1.bin").is_file() || d.join("test_batch.bin").is_file())
}

fn split_files(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => &[
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ],
        Split::Test => &["test_batch.bin"],
    }
}

/// Reads one split from a folder of batch files.
pub fn read_split(dir: &Path, split: Split) -> Result<ImageSet> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in split_files(split) {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
            return Err(Error::bad_file(
                &path,
                format!(
                    "{} bytes: not whole CIFAR-10 records of {RECORD} bytes (truncated?)",
                    bytes.len()
                ),
            ));
        }
        pixels.reserve(bytes.len() / RECORD * (RECORD - 1));
        for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
            if record[0] as usize >= CLASSES.len() {
                return Err(Error::bad_file(
                    &path,
                    format!("record {i} has label {}, not 0-9", record[0]),
                ));
            }
            labels.push(record[0] as u16);
            pixels.extend_from_slice(&record[1..]);
        }
    }
    let classes = class_names(dir);
    ImageSet::from_bytes(pixels, labels, [3, 32, 32], classes)
        .map_err(|e| Error::bad_file(dir, e.to_string()))
}

/// The names in `batches.meta.txt` when it lists ten, else the standard ones.
fn class_names(dir: &Path) -> Vec<String> {
    let listed: Vec<String> = std::fs::read_to_string(dir.join("batches.meta.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    match listed.len() {
        10 => listed,
        _ => CLASSES.iter().map(|c| c.to_string()).collect(),
    }
}

/// Makes sure CIFAR-10's batches are in `cache_dir/cifar10/cifar-10-batches-bin`, each with the
/// right SHA-256, downloading and extracting the archive when they are not.
pub fn ensure_cifar10(mirrors: &[String], cache_dir: &Path) -> Result<PathBuf> {
    ensure(&CIFAR10, mirrors, cache_dir)
}

/// [`ensure_cifar10`] for any archive description (tests use their own).
pub fn ensure(remote: &RemoteCifar, mirrors: &[String], cache_dir: &Path) -> Result<PathBuf> {
    let root = cache_dir.join("cifar10");
    let dir = root.join(BATCHES_DIR);
    let verified = |dir: &Path| -> Result<bool> {
        for (name, sha) in &remote.batches {
            let path = dir.join(name);
            if !path.is_file() || sha256_file(&path)? != *sha {
                return Ok(false);
            }
        }
        Ok(true)
    };
    if verified(&dir)? {
        return Ok(dir);
    }
    let archive = root.join(remote.archive);
    if !(archive.is_file() && sha256_file(&archive)? == remote.archive_sha256) {
        let defaults: Vec<String> = remote.mirrors.iter().map(|m| m.to_string()).collect();
        let mirrors = if mirrors.is_empty() {
            &defaults
        } else {
            mirrors
        };
        let mut failures = Vec::new();
        let fetched = mirrors.iter().any(|mirror| {
            let url = format!("{}/{}", mirror.trim_end_matches('/'), remote.archive);
            match fetch_verified_to(&url, remote.archive_sha256, &archive, remote.max_bytes) {
                Ok(()) => true,
                Err(e) => {
                    failures.push(e.to_string());
                    false
                }
            }
        });
        if !fetched {
            return Err(Error::Download {
                url: remote.archive.into(),
                reason: format!("no mirror served a valid copy: {}", failures.join("; ")),
            });
        }
    }
    extract(&archive, &root)?;
    if !verified(&dir)? {
        return Err(Error::bad_file(
            &dir,
            "the extracted batches do not match their SHA-256 sums; delete the folder to retry",
        ));
    }
    Ok(dir)
}

/// Extracts the archive's `cifar-10-batches-bin/` files into `root` (other entries, and any
/// path that would leave the folder, are skipped).
fn extract(archive: &Path, root: &Path) -> Result<()> {
    let file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let bad = |e: std::io::Error| Error::bad_file(archive, format!("corrupt archive ({e})"));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let mut parts = path.components();
        let (Some(top), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let plain = matches!(name, std::path::Component::Normal(_));
        if top.as_os_str() != BATCHES_DIR || !plain || !entry.header().entry_type().is_file() {
            continue;
        }
        let dest = root.join(BATCHES_DIR).join(name.as_os_str());
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(bad)?;
        crate::tensor_file::write_atomic(&dest, &bytes)?;
    }
    Ok(())
}
