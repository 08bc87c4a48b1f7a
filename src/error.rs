//! Typed errors of the library. Every variant names what was wrong and, where a file is
//! involved, which file, so the CLI can print one clear line.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in flowmatch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        error: std::io::Error,
    },
    /// Writing an output file failed (a full disk, a size limit, no permission); the file is
    /// written under a temporary name and renamed, so any earlier version is untouched.
    #[error("{}: cannot write ({error}); any previous version of this file is unchanged", path.display())]
    Write {
        /// The file that was being written.
        path: PathBuf,
        /// The underlying I/O error.
        error: std::io::Error,
    },
    /// A file's content is not what it should be (bad IDX header, truncated data, bad tensor).
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A download failed (network, HTTP status, or checksum).
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The address that was fetched.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// An argument or configuration value is out of range.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument or field.
        what: String,
        /// Why the value is rejected.
        reason: String,
    },
    /// Another process holds the lock of a run folder.
    #[error(
        "{}: another flowmatch process ({holder}) is training into this folder; wait for it to \
         finish or choose another --out",
        dir.display()
    )]
    Locked {
        /// The run folder.
        dir: PathBuf,
        /// Who holds the lock (its process id, as written in the lock file).
        holder: String,
    },
    /// Training produced a non-finite loss.
    #[error(
        "training diverged: loss is {loss} at step {step}; stopped without saving \
         (the last good checkpoint, if any, is unchanged)"
    )]
    Diverged {
        /// The global step (1-based) at which the loss became non-finite.
        step: u64,
        /// The offending loss value.
        loss: f32,
    },
    /// A velocity model's output cannot be used (its shape differs from its input's).
    #[error("the model's output at training step {step} is unusable: {reason}")]
    ModelOutput {
        /// The global step (1-based) of the bad output.
        step: u64,
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    /// A content error for `path`.
    pub fn bad_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An out-of-range argument.
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
