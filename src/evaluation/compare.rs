//! Checkpoints measured side by side (`flowmatch eval`): every model on the same noise, against
//! the same reference (the held-out split or a folder), in the same features (the classifier
//! given, the [`yardstick`] for the data, or pytorch-fid's Inception network); the results as
//! JSON lines, each naming its model, and quality against NFE in one plot.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::classifier::{Classifier, ClassifierInfo};
use super::inception::Inception;
use super::metrics::Quality;
use super::{EvalEvent, EvalOptions, EvalReport, Yardstick, evaluate, pinned_fits, yardstick};
use crate::checkpoint::{self, Weights};
use crate::data::{DataOptions, DataSource, ImageSet, LoadNote, Split};
use crate::error::{Error, Result};
use crate::flow::scheduler::Parametrisation;
use crate::image_out;
use crate::model::Network;
use crate::tensor_file::write_atomic;

/// What to compare, against what, and where the results go.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The checkpoints (at least one), all of one image shape.
    pub checkpoints: Vec<PathBuf>,
    /// Which weights of each checkpoint are measured.
    pub weights: Weights,
    /// A classifier written by `flowmatch classifier train`; `None`: the data's yardstick.
    pub classifier: Option<PathBuf>,
    /// pytorch-fid's Inception weights: quality in its features (the standard FID and KID)
    /// instead of a classifier's. Give either this or `classifier`.
    pub inception: Option<PathBuf>,
    /// A folder of images measured against instead of the data set's held-out split (its
    /// halves give the real-data floor).
    pub reference: Option<PathBuf>,
    /// The data set: its held-out split is the reference; its training split serves the
    /// memorisation check and, for data that is not MNIST, a classifier trained on its labels.
    pub data: DataSource,
    /// The data set's name as given (in messages and in a trained classifier's cache key).
    pub data_name: String,
    /// How the data set is reached (its images are brought to the models' shape).
    pub data_options: DataOptions,
    /// What to measure.
    pub eval: EvalOptions,
    /// The JSON lines output.
    pub out: PathBuf,
    /// Quality against NFE as a PNG (written when a classifier measured quality).
    pub plot: Option<PathBuf>,
}

/// What a comparison reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum CompareEvent<'a> {
    /// Loading the data set.
    Data(LoadNote<'a>),
    /// Choosing the classifier (training one on the data's labels, or finding it cached).
    Note(&'a str),
    /// The classifier chosen, named, with its record; `None`: the data has no labels, so only
    /// the measures that need no classifier run.
    Classifier(Option<(&'a str, &'a ClassifierInfo)>),
    /// Quality is measured in the Inception features of these weights.
    Inception(&'a Path),
    /// A model's measurements start (announced only when there are several models).
    Model {
        /// Its short name ([`model_name`]).
        name: &'a str,
        /// Its checkpoint.
        path: &'a Path,
    },
    /// One result of the current model (the real-data floor only once: it is every model's).
    Result(EvalEvent<'a>),
    /// The JSON lines were written here.
    Results(&'a Path),
    /// The plot was written here.
    Plot(&'a Path),
}

/// What a comparison measured.
#[derive(Debug, Clone)]
pub struct CompareReport {
    /// Each model's name and measurements, in the order of the checkpoints.
    pub models: Vec<(String, EvalReport)>,
    /// The real-data floor (when quality was measured).
    pub floor: Option<Quality>,
}

/// A short name for a checkpoint in tables and legends: its folder for `final.safetensors`
/// (or `last`), else its file name without the extension.
pub fn model_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map_or(String::new(), |s| s.to_string_lossy().into_owned());
    match (stem.as_str(), path.parent().and_then(|p| p.file_name())) {
        ("final" | "last", Some(dir)) => dir.to_string_lossy().into_owned(),
        _ => stem,
    }
}

/// Measures every checkpoint of `options` as [`evaluate`] does, with one data set, one
/// classifier and one noise for all, reporting to `on_event` as it goes; writes the JSON lines
/// (each with its model's name) and the plot.
pub fn compare(
    options: &CompareOptions,
    device: &Device,
    mut on_event: impl FnMut(CompareEvent),
) -> Result<CompareReport> {
    let paths = &options.checkpoints;
    let first = paths
        .first()
        .ok_or_else(|| Error::invalid("checkpoints", "none given"))?;
    let models = paths
        .iter()
        .map(|path| {
            let loaded = checkpoint::load_weights(path, device, options.weights)?;
            let trained = loaded
                .parametrisation()
                .map_err(|e| Error::bad_file(path, e.to_string()))?;
            Ok((loaded.model, trained))
        })
        .collect::<Result<Vec<(Network, Parametrisation)>>>()?;
    let shape = models[0].0.image_shape();
    if let Some(i) = models.iter().position(|(m, _)| m.image_shape() != shape) {
        return Err(Error::bad_file(
            &paths[i],
            format!(
                "its images are {:?}, those of {} {shape:?}: models are compared on one data set",
                models[i].0.image_shape(),
                first.display()
            ),
        ));
    }
    let [channels, size, _] = shape;
    let data_options = DataOptions {
        image_size: Some(size),
        channels: Some(channels),
        ..options.data_options.clone()
    };
    let mut load_from = |source: &DataSource, split, data_options: &DataOptions| {
        ImageSet::load_noted(source, split, data_options, |note| {
            on_event(CompareEvent::Data(note))
        })
    };
    let test = match &options.reference {
        // Every image of the folder.
        Some(dir) => {
            let folder = DataOptions {
                holdout: 0.0,
                limit: None,
                ..data_options.clone()
            };
            let source = DataSource::parse(&dir.display().to_string());
            load_from(&source, Split::Train, &folder)?
        }
        None => load_from(&options.data, Split::Test, &data_options)?,
    };
    if let (Some(_), Some(path)) = (&options.inception, &options.classifier) {
        return Err(Error::invalid(
            "yardstick",
            format!(
                "both a classifier ({}) and Inception weights given: quality is measured in one",
                path.display()
            ),
        ));
    }
    let inception = match &options.inception {
        Some(path) => Some(Inception::load(path, device)?),
        None => None,
    };
    // The pinned classifier reads MNIST's 28x28 digits; other data needs its training split
    // for a classifier trained on its labels.
    let pinned = pinned_fits(&options.data, shape);
    let needs_classifier = inception.is_none();
    let needs_train =
        options.eval.memorisation || (needs_classifier && options.classifier.is_none() && !pinned);
    let train = match needs_train {
        true => Some(load_from(&options.data, Split::Train, &data_options)?),
        false => None,
    };
    let (classifier, classifier_name) = match (&options.classifier, &train) {
        _ if !needs_classifier => (None, String::new()),
        (Some(path), _) => (
            Some(Classifier::load(path, device)?),
            path.display().to_string(),
        ),
        (None, Some(train)) if !pinned => (
            yardstick(
                &options.data,
                &options.data_name,
                train,
                &test,
                &options.data_options.cache_dir,
                device,
                |note| on_event(CompareEvent::Note(note)),
            )?,
            format!("classifier trained on {}'s labels", options.data_name),
        ),
        _ => (
            Some(Classifier::pinned(device)?),
            "pinned digit classifier".to_string(),
        ),
    };
    match (&options.inception, &classifier) {
        (Some(path), _) => on_event(CompareEvent::Inception(path)),
        (None, chosen) => on_event(CompareEvent::Classifier(
            chosen
                .as_ref()
                .map(|(_, info)| (classifier_name.as_str(), info)),
        )),
    }
    let measure: Option<Yardstick> = match (&inception, &classifier) {
        (Some(net), _) => Some(net.into()),
        (None, Some((c, _))) => Some(c.into()),
        (None, None) => None,
    };
    let (mut lines, mut curves, mut floor, mut reports) =
        (String::new(), Vec::new(), None, Vec::new());
    for ((model, trained), path) in models.iter().zip(paths) {
        let name = model_name(path);
        let mut eval = options.eval.clone();
        eval.plan.schedule.trained = *trained;
        if models.len() > 1 {
            on_event(CompareEvent::Model { name: &name, path });
        }
        let shown_floor = floor.is_some();
        let report = evaluate(
            model,
            measure,
            train.as_ref(),
            &test,
            &eval,
            device,
            |event| {
                if !(shown_floor && matches!(event, EvalEvent::Floor(_))) {
                    on_event(CompareEvent::Result(event))
                }
            },
        )?;
        for line in report.json_lines().lines() {
            let mut value: serde_json::Value =
                serde_json::from_str(line).expect("the report's own JSON lines parse");
            value["model"] = name.clone().into();
            if inception.is_some() {
                value["features"] = "inception".into();
            }
            lines.push_str(&format!("{value}\n"));
        }
        for mut curve in report.curves() {
            if models.len() > 1 {
                curve.label = format!("{name} {}", curve.label);
            }
            curves.push(curve);
        }
        floor = floor.or(report.floor.clone());
        reports.push((name, report));
    }
    write_atomic(&options.out, lines.as_bytes())?;
    on_event(CompareEvent::Results(&options.out));
    if let (Some(plot), Some(floor)) = (&options.plot, &floor) {
        image_out::quality_plot(&curves, floor.fid, floor.confident, plot)?;
        on_event(CompareEvent::Plot(plot));
    }
    Ok(CompareReport {
        models: reports,
        floor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_classifier_fits_only_mnist_digits_at_their_own_shape() {
        let (embedded, mnist) = (DataSource::Embedded, DataSource::Mnist);
        assert!(pinned_fits(&embedded, [1, 28, 28]) && pinned_fits(&mnist, [1, 28, 28]));
        assert!(!pinned_fits(&mnist, [1, 32, 32]) && !pinned_fits(&embedded, [3, 28, 28]));
        assert!(!pinned_fits(&DataSource::FashionMnist, [1, 28, 28]));
        assert!(!pinned_fits(&DataSource::Cifar10, [3, 32, 32]));
    }

    #[test]
    fn models_are_named_after_their_run_folder_or_file() {
        assert_eq!(model_name(Path::new("runs/demo/final.safetensors")), "demo");
        assert_eq!(model_name(Path::new("runs/a/last.safetensors")), "a");
        assert_eq!(
            model_name(Path::new("runs/a/minutes-0005.safetensors")),
            "minutes-0005"
        );
        assert_eq!(model_name(Path::new("final.safetensors")), "final");
        assert_eq!(model_name(Path::new("weights.safetensors")), "weights");
    }
}
