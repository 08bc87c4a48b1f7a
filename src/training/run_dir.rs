//! A run's output folder: the names of the files training leaves there and the lock that
//! keeps a second process from training into the same folder.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Name of the final checkpoint in the output folder.
pub const FINAL_CHECKPOINT: &str = "final.safetensors";
/// Name of the resumable checkpoint (model, EMA, optimiser state, progress), rewritten at every
/// checkpoint and on interruption.
pub const RESUME_CHECKPOINT: &str = "last.safetensors";
/// Name of the per-step and per-epoch log (JSON lines).
pub const METRICS: &str = "metrics.jsonl";
/// Name of the run's configuration file (TOML), readable by `train --config`.
pub const CONFIG: &str = "config.toml";
/// Name of the loss curve plot.
pub const LOSS_CURVE: &str = "loss_curve.png";

/// Name of the lock file a running `train` holds in its output folder.
pub const LOCK_FILE: &str = "train.lock";

/// An exclusive lock on a run folder, held while training writes into it, so that a second
/// `train` into the same folder refuses instead of interleaving its files. The operating
/// system releases it when the process ends, however it ends.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist), or fails at once if another process has it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        #[cfg(unix)]
        {
            use std::io::{Read, Seek};
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(Error::io(&path, error));
                }
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                    holder: match holder.trim() {
                        "" => "unknown pid".into(),
                        pid => format!("pid {pid}"),
                    },
                });
            }
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| write!(file, "{}", std::process::id()))
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(RunLock { _file: file })
    }
}
