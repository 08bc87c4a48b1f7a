//! The IDX file format of MNIST-style data sets (gzip-compressed or raw).
//!
//! Layout: a big-endian magic number `0x0000_08NN` (0x08 = unsigned bytes, NN = number of
//! dimensions), NN big-endian u32 dimensions, then the row-major data.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// An n-dimensional array of unsigned bytes read from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions (e.g. `[count, 28, 28]` for images, `[count]` for labels).
    pub dims: Vec<usize>,
    /// Row-major values.
    pub data: Vec<u8>,
}

/// Reads an IDX file, decompressing it first when it is gzip.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_idx(&bytes).map_err(|reason| Error::bad_file(path, reason))
}

/// Parses IDX bytes (gzip or raw); the error says what is wrong.
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| format!("corrupt gzip data ({e})"))?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    if bytes.len() < 4 {
        return Err(format!("too short for an IDX file ({} bytes)", bytes.len()));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(format!(
            "bad IDX magic number {:02x}{:02x}{:02x}{:02x} (expected 000008NN: unsigned bytes)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ));
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err("IDX header declares zero dimensions".into());
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(format!(
            "truncated IDX header ({} of {header} bytes)",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or("IDX dimensions overflow")?;
    let available = bytes.len() - header;
    if available < expected {
        return Err(format!(
            "truncated: dimensions {dims:?} need {expected} data bytes, the file has {available}"
        ));
    }
    if available > expected {
        return Err(format!(
            "{} bytes of trailing data after the {expected} declared by dimensions {dims:?}",
            available - expected
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend(data);
        out
    }

    #[test]
    fn reads_raw_and_gzip() {
        let raw = idx(&[2, 2], &[1, 2, 3, 4]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let gz = gz.finish().unwrap();
        for bytes in [raw, gz] {
            let array = parse_idx(&bytes).unwrap();
            assert_eq!(array.dims, vec![2, 2]);
            assert_eq!(array.data, vec![1, 2, 3, 4]);
        }
    }

    #[test]
    fn rejects_bad_magic_truncation_and_trailing_data() {
        let mut bad_magic = idx(&[1], &[0]);
        bad_magic[2] = 0x0d;
        assert!(parse_idx(&bad_magic).unwrap_err().contains("magic"));
        assert!(
            parse_idx(&idx(&[3, 2], &[0; 5]))
                .unwrap_err()
                .contains("truncated")
        );
        assert!(
            parse_idx(&idx(&[3], &[0; 4]))
                .unwrap_err()
                .contains("trailing")
        );
        assert!(parse_idx(&[0, 0, 8, 3, 0]).unwrap_err().contains("header"));
        assert!(
            parse_idx(&[0x1f, 0x8b, 1, 2, 3])
                .unwrap_err()
                .contains("gzip")
        );
    }
}
