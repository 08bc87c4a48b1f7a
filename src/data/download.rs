//! Downloading the public data sets into a cache, each file verified by SHA-256.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::tensor_file::AtomicFile;

/// One file of a remote data set and the SHA-256 of its bytes as served.
#[derive(Debug, Clone, Copy)]
pub struct RemoteFile {
    /// File name, identical on every mirror and in the cache.
    pub name: &'static str,
    /// Lower-case hex SHA-256 of the file as downloaded.
    pub sha256: &'static str,
}

/// A data set published as IDX files on one or more mirrors.
#[derive(Debug, Clone, Copy)]
pub struct RemoteDataset {
    /// Name, also the cache sub-folder.
    pub name: &'static str,
    /// Base addresses tried in order (each ends with '/').
    pub mirrors: &'static [&'static str],
    /// The four IDX files.
    pub files: [RemoteFile; 4],
}

/// MNIST (LeCun, Cortes, Burges), from the mirrors used by torchvision and TensorFlow.
pub const MNIST: RemoteDataset = RemoteDataset {
    name: "mnist",
    mirrors: &[
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    files: [
        RemoteFile {
            name: "train-images-idx3-ubyte.gz",
            sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        },
        RemoteFile {
            name: "train-labels-idx1-ubyte.gz",
            sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        },
        RemoteFile {
            name: "t10k-images-idx3-ubyte.gz",
            sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        },
        RemoteFile {
            name: "t10k-labels-idx1-ubyte.gz",
            sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ],
};

/// Fashion-MNIST (Zalando Research), from the mirror used by torchvision.
pub const FASHION_MNIST: RemoteDataset = RemoteDataset {
    name: "fashion-mnist",
    mirrors: &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    files: [
        RemoteFile {
            name: "train-images-idx3-ubyte.gz",
            sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        },
        RemoteFile {
            name: "train-labels-idx1-ubyte.gz",
            sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        },
        RemoteFile {
            name: "t10k-images-idx3-ubyte.gz",
            sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        },
        RemoteFile {
            name: "t10k-labels-idx1-ubyte.gz",
            sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ],
};

/// Largest file accepted from a server (the biggest real one is ~26 MB).
const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes sure every file of `dataset` is in `cache_dir/<name>/` with the right checksum,
/// downloading what is missing or wrong from `mirrors` (or the data set's own mirrors when
/// empty). Returns the folder. A file whose checksum does not match is never kept.
pub fn ensure_dataset(
    dataset: &RemoteDataset,
    mirrors: &[String],
    cache_dir: &Path,
) -> Result<PathBuf> {
    let dir = cache_dir.join(dataset.name);
    let default_mirrors: Vec<String> = dataset.mirrors.iter().map(|m| m.to_string()).collect();
    let mirrors = if mirrors.is_empty() {
        &default_mirrors[..]
    } else {
        mirrors
    };
    for file in &dataset.files {
        let dest = dir.join(file.name);
        if let Ok(bytes) = std::fs::read(&dest) {
            if sha256_hex(&bytes) == file.sha256 {
                continue;
            }
            std::fs::remove_file(&dest).map_err(|e| Error::io(&dest, e))?;
        }
        let mut failures = Vec::new();
        let fetched = mirrors.iter().any(|mirror| {
            let url = format!("{}/{}", mirror.trim_end_matches('/'), file.name);
            match fetch_verified(&url, file.sha256, &dest) {
                Ok(()) => true,
                Err(e) => {
                    failures.push(e.to_string());
                    false
                }
            }
        });
        if !fetched {
            return Err(Error::Download {
                url: file.name.to_string(),
                reason: format!("no mirror served a valid copy: {}", failures.join("; ")),
            });
        }
    }
    Ok(dir)
}

/// Downloads `url`, checks its SHA-256 against `sha256` and only then writes it to `dest`
/// (atomically). On any failure nothing is written.
pub fn fetch_verified(url: &str, sha256: &str, dest: &Path) -> Result<()> {
    fetch_verified_to(url, sha256, dest, MAX_DOWNLOAD_BYTES)
}

/// [`fetch_verified`] for files of up to `max_bytes`, streamed to a temporary file beside
/// `dest` while hashed (memory stays small whatever the size); renamed into place only when
/// the SHA-256 matches.
pub fn fetch_verified_to(url: &str, sha256: &str, dest: &Path, max_bytes: u64) -> Result<()> {
    let fail = |reason: String| Error::Download {
        url: url.to_string(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3600)))
        .timeout_connect(Some(Duration::from_secs(20)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let mut reader = response.into_body().into_reader().take(max_bytes + 1);
    let mut file = AtomicFile::create(dest)?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| fail(format!("reading the body: {e}")))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max_bytes {
            return Err(fail(format!("larger than {max_bytes} bytes")));
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n])?;
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != sha256 {
        return Err(fail(format!(
            "SHA-256 mismatch (expected {sha256}, got {actual}); the file was not kept"
        )));
    }
    file.commit()
}

/// Hex SHA-256 of a file's contents, read in pieces.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
