//! A folder of images (PNG, JPEG; searched recursively) as a data set: labelled by sub-folder
//! the way torchvision's `ImageFolder` is (class names sorted), or unlabelled; decoded in
//! parallel once into a packed cache file, memory-mapped on every later run; a seeded fraction
//! held out as the test split.
//!
//! Faults: an empty folder, and a folder none of whose images decode, are errors naming the
//! folder; a corrupt, truncated or mislabelled image file is skipped with a warning naming it
//! (one bad file among thousands should not stop a run); files that are not PNG or JPEG by
//! name are ignored, and counted in a note; mixed sizes without `--image-size` are an error
//! naming two of the files; a folder with a single class trains without labels, with a warning.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::convert::{check_target, fit, from_image};
use super::download::sha256_hex;
use super::{DataOptions, ImageSet, Pixels, Split};
use crate::error::{Error, Result};
use crate::tensor_file::{AtomicFile, write_atomic};

/// Images decoded per parallel batch while the cache file is written.
const DECODE_CHUNK: usize = 512;
/// Seed of the held-out split (the same split on every run).
const SPLIT_SEED: u64 = 0x0F01_DE75;

/// One image file found in the folder.
#[derive(Debug, Clone)]
struct Found {
    path: PathBuf,
    label: u16,
    size: u64,
    modified: u128,
}

/// What a decoded folder's cache holds besides the pixels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Meta {
    shape: [usize; 3],
    classes: Vec<String>,
    labels: Vec<u16>,
    warnings: Vec<String>,
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Every file below `dir` (hidden ones skipped), sorted; a folder reached twice (through a
/// link) is walked once.
fn walk(dir: &Path, visited: &mut HashSet<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    if !visited.insert(dir.canonicalize().map_err(|e| Error::io(dir, e))?) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, visited, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The image files and class names of `dir`, with the notes a user should see.
fn scan(dir: &Path) -> Result<(Vec<Found>, Vec<String>, Vec<String>)> {
    let mut files = Vec::new();
    walk(dir, &mut HashSet::new(), &mut files)?;
    let others = files.iter().filter(|p| !is_image(p)).count();
    let images: Vec<PathBuf> = files.into_iter().filter(|p| is_image(p)).collect();
    if images.is_empty() {
        return Err(Error::bad_file(
            dir,
            "no PNG or JPEG images in this folder (searched recursively)",
        ));
    }
    let mut notes = Vec::new();
    if others > 0 {
        notes.push(format!(
            "{}: ignored {others} file(s) that are not PNG or JPEG",
            dir.display()
        ));
    }
    let top = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(dir).ok()?;
        let mut parts = rel.components();
        let first = parts.next()?;
        parts
            .next()
            .map(|_| first.as_os_str().to_string_lossy().into_owned())
    };
    let mut classes: Vec<String> = images.iter().filter_map(|p| top(p)).collect();
    classes.sort();
    classes.dedup();
    let loose = images.iter().any(|p| top(p).is_none());
    if loose && !classes.is_empty() {
        notes.push(format!(
            "{}: images both in the folder and in sub-folders: training without labels",
            dir.display()
        ));
        classes.clear();
    } else if classes.len() == 1 {
        notes.push(format!(
            "{}: a single class folder ('{}'): training without labels",
            dir.display(),
            classes[0]
        ));
        classes.clear();
    }
    let found = images
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let label = match top(&path) {
                Some(class) => classes.iter().position(|c| *c == class).unwrap_or(0) as u16,
                None => 0,
            };
            Ok(Found {
                path,
                label,
                size: meta.len(),
                modified,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if classes.len() > u16::MAX as usize {
        return Err(Error::bad_file(dir, "more than 65535 class folders"));
    }
    Ok((found, classes, notes))
}

/// The shape every image is brought to: the requested one, or the images' own when they all
/// share a square size (read from the headers only).
fn target_shape(found: &[Found], options: &DataOptions) -> Result<[usize; 3]> {
    /// What an image's header says.
    #[derive(Clone, Copy)]
    struct Header {
        index: usize,
        width: u32,
        height: u32,
        grey: bool,
    }
    let read = |index: usize, path: &Path| -> Option<Header> {
        use image::ImageDecoder;
        let decoder = image::ImageReader::open(path)
            .ok()?
            .with_guessed_format()
            .ok()?
            .into_decoder()
            .ok()?;
        let (width, height) = decoder.dimensions();
        let grey = decoder.color_type().channel_count() <= 2;
        Some(Header {
            index,
            width,
            height,
            grey,
        })
    };
    let headers: Vec<Header> = found
        .par_iter()
        .enumerate()
        .filter_map(|(i, f)| read(i, &f.path))
        .collect();
    let Some(&first) = headers.first() else {
        return Err(Error::bad_file(
            &found[0].path,
            "no image in the folder could be read (this one is not a valid PNG or JPEG)",
        ));
    };
    let channels = options
        .channels
        .unwrap_or(if headers.iter().all(|h| h.grey) { 1 } else { 3 });
    let size = match options.image_size {
        Some(size) => size,
        None => {
            let (w0, h0) = (first.width, first.height);
            if let Some(other) = headers.iter().find(|h| (h.width, h.height) != (w0, h0)) {
                return Err(Error::bad_file(
                    &found[other.index].path,
                    format!(
                        "is {}x{} but {} is {w0}x{h0}: give --image-size N to bring every \
                         image to N x N",
                        other.width,
                        other.height,
                        found[first.index].path.display()
                    ),
                ));
            }
            if w0 != h0 {
                return Err(Error::bad_file(
                    &found[first.index].path,
                    format!("the images are {w0}x{h0}: give --image-size N to crop them square"),
                ));
            }
            w0 as usize
        }
    };
    check_target(channels, size)?;
    Ok([channels, size, size])
}

/// The cache key of a folder at a shape: its files (names, sizes, times) and the shape (v2:
/// the centre square is cropped before the resize).
fn cache_key(dir: &Path, found: &[Found], shape: [usize; 3], classes: &[String]) -> String {
    let mut text = format!(
        "flowmatch-folder-v2\n{}\n{shape:?}\n{classes:?}\n",
        dir.display()
    );
    for f in found {
        text.push_str(&format!(
            "{}\t{}\t{}\n",
            f.path.display(),
            f.size,
            f.modified
        ));
    }
    sha256_hex(text.as_bytes())[..32].to_string()
}

/// Decodes every image into `bin` (packed `[n, c, s, s]`), in parallel chunks; returns the
/// labels of the images kept and a warning per skipped file.
fn decode_into(found: &[Found], shape: [usize; 3], bin: &Path) -> Result<(Vec<u16>, Vec<String>)> {
    let [channels, size, _] = shape;
    let mut file = AtomicFile::create(bin)?;
    let (mut labels, mut warnings) = (Vec::new(), Vec::new());
    for chunk in found.chunks(DECODE_CHUNK) {
        let decoded: Vec<std::result::Result<Vec<u8>, String>> = chunk
            .par_iter()
            .map(|f| {
                let image = image::ImageReader::open(&f.path)
                    .map_err(|e| e.to_string())?
                    .with_guessed_format()
                    .map_err(|e| e.to_string())?
                    .decode()
                    .map_err(|e| e.to_string())?;
                if image.width() == 0 || image.height() == 0 {
                    return Err("it has no pixels".to_string());
                }
                Ok(from_image(&fit(image, size), channels))
            })
            .collect();
        for (f, result) in chunk.iter().zip(decoded) {
            match result {
                Ok(bytes) => {
                    file.write_all(&bytes)?;
                    labels.push(f.label);
                }
                Err(reason) => warnings.push(format!(
                    "{}: skipped, not a readable PNG or JPEG ({reason})",
                    f.path.display()
                )),
            }
        }
    }
    file.commit()?;
    Ok((labels, warnings))
}

/// Loads `split` of the image folder `dir`, decoding it into the cache on the first run.
pub fn load(dir: &Path, split: Split, options: &DataOptions) -> Result<ImageSet> {
    let (found, classes, mut notes) = scan(dir)?;
    let shape = target_shape(&found, options)?;
    let key = cache_key(dir, &found, shape, &classes);
    let cache = options.cache_dir.join("decoded");
    let (bin, json) = (
        cache.join(format!("{key}.u8")),
        cache.join(format!("{key}.json")),
    );
    let cached: Option<Meta> = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(|m: &Meta| m.shape == shape);
    let meta = match cached {
        Some(meta) => meta,
        None => {
            let (labels, warnings) = decode_into(&found, shape, &bin)?;
            if labels.is_empty() {
                return Err(Error::bad_file(
                    dir,
                    format!("none of the {} images could be decoded", found.len()),
                ));
            }
            let meta = Meta {
                shape,
                classes: classes.clone(),
                labels,
                warnings,
            };
            write_atomic(
                &json,
                serde_json::to_string(&meta).expect("serialises").as_bytes(),
            )?;
            meta
        }
    };
    notes.extend(meta.warnings.iter().cloned());
    let file = std::fs::File::open(&bin).map_err(|e| Error::io(&bin, e))?;
    // SAFETY: the cache file is written once, atomically, and never modified in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&bin, e))?;
    let set = ImageSet::new(
        Pixels::Mapped(Arc::new(map)),
        meta.labels,
        shape,
        meta.classes,
    )
    .map_err(|e| Error::bad_file(&bin, format!("damaged cache file, delete it ({e})")))?;
    let mut set = held_out_split(set, split, options.holdout, dir)?;
    set.notes = notes;
    Ok(set)
}

/// The training or held-out part of `set`: a seeded `holdout` fraction of the images.
fn held_out_split(set: ImageSet, split: Split, holdout: f64, dir: &Path) -> Result<ImageSet> {
    if !(0.0..1.0).contains(&holdout) {
        return Err(Error::invalid(
            "holdout",
            format!("{holdout}: must be in [0, 1)"),
        ));
    }
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(SPLIT_SEED));
    let held = ((set.len() as f64 * holdout).round() as usize).min(set.len().saturating_sub(1));
    let (test, train) = order.split_at(held);
    let mut part = match split {
        Split::Train => train.to_vec(),
        Split::Test => test.to_vec(),
    };
    if part.is_empty() {
        return Err(Error::bad_file(
            dir,
            "no held-out images: the folder is too small or --holdout is 0",
        ));
    }
    part.sort_unstable();
    Ok(set.select(&part))
}
