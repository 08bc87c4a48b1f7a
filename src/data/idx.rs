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

/// Largest data section accepted (4 GiB): a header claiming more is rejected before anything
/// is allocated.
pub const MAX_IDX_BYTES: usize = 1 << 32;

/// Parses IDX bytes (gzip or raw); the error says what is wrong. The header is read first and
/// checked, and the data is read up to the size it declares, so a header claiming huge
/// dimensions costs nothing and memory never exceeds what the stream really holds.
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        parse_stream(flate2::read::GzDecoder::new(bytes), true)
    } else {
        parse_stream(bytes, false)
    }
}

/// Up to `n` bytes of `reader` (fewer at the end of the stream).
fn read_up_to(
    reader: &mut impl Read,
    n: usize,
    gzip: bool,
) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    reader
        .take(n as u64)
        .read_to_end(&mut out)
        .map_err(|e| match gzip {
            true => format!("corrupt gzip data ({e})"),
            false => format!("cannot read ({e})"),
        })?;
    Ok(out)
}

fn parse_stream(mut reader: impl Read, gzip: bool) -> std::result::Result<IdxArray, String> {
    let magic = read_up_to(&mut reader, 4, gzip)?;
    if magic.len() < 4 {
        return Err(format!("too short for an IDX file ({} bytes)", magic.len()));
    }
    if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 {
        return Err(format!(
            "bad IDX magic number {:02x}{:02x}{:02x}{:02x} (expected 000008NN: unsigned bytes)",
            magic[0], magic[1], magic[2], magic[3]
        ));
    }
    let rank = magic[3] as usize;
    if rank == 0 {
        return Err("IDX header declares zero dimensions".into());
    }
    let header = read_up_to(&mut reader, 4 * rank, gzip)?;
    if header.len() < 4 * rank {
        return Err(format!(
            "truncated IDX header ({} of {} bytes)",
            4 + header.len(),
            4 + 4 * rank
        ));
    }
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            format!("IDX dimensions {dims:?} are implausibly large (over {MAX_IDX_BYTES} bytes)")
        })?;
    // One byte more than declared reveals trailing data.
    let data = read_up_to(&mut reader, expected + 1, gzip)?;
    let available = data.len();
    if available < expected {
        return Err(format!(
            "truncated: dimensions {dims:?} need {expected} data bytes, the file has {available}"
        ));
    }
    if available > expected {
        return Err(format!(
            "trailing data after the {expected} bytes declared by dimensions {dims:?}"
        ));
    }
    Ok(IdxArray { dims, data })
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
