//! A small MNIST classifier that flowmatch trains itself, used as the feature extractor of the
//! quality metrics (a "classifier-FID", as Inception features are for natural images).
//!
//! Four 3x3 convolutions (two with stride 2) with ReLU, a 128-unit feature layer, 10 logits.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::data::augment::Augment;
use crate::data::download::sha256_hex;
use crate::data::{EpochOrder, ImageSet};
use crate::error::{Error, Result};
use crate::kernels::conv2d;
use crate::lr_schedule::LrSchedule;
use crate::model::{ConvParams, Dense, Init, ParamSource, RandomInit, named_parameters, param};
use crate::tensor_file::{FileParams, TensorFile};

/// Size of the feature layer used by the metrics.
pub const FEATURES: usize = 128;
/// Metadata key of the classifier's record (JSON of [`ClassifierInfo`]).
pub const META_CLASSIFIER: &str = "flowmatch.classifier";

/// How a classifier is trained: AdamW (weight decay 1e-4) with a warm-up + cosine schedule,
/// on randomly distorted copies of the training images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassifierRecipe {
    /// Passes over the training set.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Images per step.
    pub batch_size: usize,
    /// Random distortions of every training image (none: the images as they are).
    pub augment: Option<Augment>,
    /// Seed of initialisation, order and distortions.
    pub seed: u64,
}

impl ClassifierRecipe {
    /// The recipe of the pinned digit classifier that `flowmatch eval` uses by default.
    pub const PINNED: ClassifierRecipe = ClassifierRecipe {
        epochs: 60,
        lr: 2e-3,
        batch_size: 128,
        augment: Some(Augment::DIGITS),
        seed: 0,
    };
}

/// Where the pinned classifier's weights come from (for messages).
pub const PINNED_NAME: &str = "<pinned classifier assets/classifier/mnist-digits.safetensors>";
/// SHA-256 of the pinned classifier's file.
pub const PINNED_SHA256: &str = "6149908550116352cf529b7be07eafdd12df0797f5773ea38b9878981fee42e8";
static PINNED_BYTES: &[u8] = include_bytes!("../../assets/classifier/mnist-digits.safetensors");

/// What a stored classifier was trained on and how well it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    /// Data set name.
    pub data: String,
    /// How it was trained.
    pub recipe: ClassifierRecipe,
    /// Accuracy on the held-out split.
    pub test_accuracy: f64,
    /// Held-out images it was measured on.
    pub test_images: usize,
    /// `[channels, height, width]` of the images it reads.
    #[serde(default = "mnist_shape")]
    pub shape: [usize; 3],
    /// The class names, in label order.
    #[serde(default = "digit_names")]
    pub classes: Vec<String>,
}

fn mnist_shape() -> [usize; 3] {
    [1, 28, 28]
}

fn digit_names() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// The classifier network (shapes for 28x28 grey digits in brackets).
#[derive(Module, Debug)]
pub struct Classifier {
    /// channels -> 32, full resolution (28x28).
    pub conv1: ConvParams,
    /// 32 -> 32, stride 2 (14x14).
    pub conv2: ConvParams,
    /// 32 -> 64 (14x14).
    pub conv3: ConvParams,
    /// 64 -> 64, stride 2 (7x7).
    pub conv4: ConvParams,
    /// 64 x quarter-size pixels -> 128 feature layer (3136 -> 128).
    pub fc1: Dense,
    /// 128 -> class logits.
    pub fc2: Dense,
    #[module(skip)]
    shape: [usize; 3],
}

fn conv<S: ParamSource>(
    source: &mut S,
    name: &str,
    c_in: usize,
    c_out: usize,
    device: &Device,
) -> Result<ConvParams> {
    let fan_in = c_in * 9;
    Ok(ConvParams {
        weight: param(
            source,
            &format!("{name}.weight"),
            [c_out, c_in, 3, 3],
            Init::FanIn(fan_in),
            device,
        )?,
        bias: param(
            source,
            &format!("{name}.bias"),
            [c_out],
            Init::FanIn(fan_in),
            device,
        )?,
    })
}

impl Classifier {
    /// Builds the network for images of `shape` and `classes` classes from `source`.
    pub fn build<S: ParamSource>(
        source: &mut S,
        shape: [usize; 3],
        classes: usize,
        device: &Device,
    ) -> Result<Self> {
        let [c, h, w] = shape;
        if c == 0 || h < 4 || w < 4 || classes < 2 {
            return Err(Error::invalid(
                "classifier",
                format!(
                    "{c}x{h}x{w} images, {classes} classes: needs images of 4x4 or more, 2+ classes"
                ),
            ));
        }
        let quarter = |n: usize| n.div_ceil(2).div_ceil(2);
        Ok(Classifier {
            conv1: conv(source, "conv1", c, 32, device)?,
            conv2: conv(source, "conv2", 32, 32, device)?,
            conv3: conv(source, "conv3", 32, 64, device)?,
            conv4: conv(source, "conv4", 64, 64, device)?,
            fc1: Dense::build(
                source,
                "fc1",
                64 * quarter(h) * quarter(w),
                FEATURES,
                device,
            )?,
            fc2: Dense::build(source, "fc2", FEATURES, classes, device)?,
            shape,
        })
    }

    /// `[channels, height, width]` of the images it reads.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The 128 features of images `x` (`[batch, c, h, w]`, values in [-1, 1]).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let layer =
            |x, c: &ConvParams, stride| relu(conv2d(x, c.weight.val(), c.bias.val(), stride, 1));
        let h = layer(x, &self.conv1, 1);
        let h = layer(h, &self.conv2, 2);
        let h = layer(h, &self.conv3, 1);
        let h = layer(h, &self.conv4, 2);
        let [b, c, hh, ww] = h.dims();
        relu(self.fc1.forward(h.reshape([b, c * hh * ww])))
    }

    /// Class logits of images `x`.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc2.forward(self.features(x))
    }

    /// Loads a classifier written by [`train_classifier`].
    pub fn load(path: &Path, device: &Device) -> Result<(Self, ClassifierInfo)> {
        Self::from_file(&TensorFile::read(path)?, path, device)
    }

    /// The pinned digit classifier shipped with flowmatch (`assets/classifier`), the default
    /// yardstick of `flowmatch eval` on MNIST: trained by `flowmatch classifier train` with
    /// [`ClassifierRecipe::PINNED`] on the embedded training digits, its bytes checked against
    /// [`PINNED_SHA256`], so that numbers are comparable between machines and versions.
    pub fn pinned(device: &Device) -> Result<(Self, ClassifierInfo)> {
        let path = Path::new(PINNED_NAME);
        let digest = sha256_hex(PINNED_BYTES);
        if digest != PINNED_SHA256 {
            return Err(Error::bad_file(
                path,
                format!("SHA-256 {digest}, expected {PINNED_SHA256}: the build is damaged"),
            ));
        }
        Self::from_file(&TensorFile::from_bytes(PINNED_BYTES, path)?, path, device)
    }

    fn from_file(
        file: &TensorFile,
        path: &Path,
        device: &Device,
    ) -> Result<(Self, ClassifierInfo)> {
        let kind = "flowmatch classifier";
        let info = file
            .metadata
            .get(META_CLASSIFIER)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!("not a {kind}: no readable '{META_CLASSIFIER}' metadata"),
                )
            })?;
        let mut source = FileParams {
            file,
            path,
            prefix: "",
            kind,
        };
        let info: ClassifierInfo = info;
        let model = Classifier::build(&mut source, info.shape, info.classes.len(), device)?;
        Ok((model, info))
    }

    /// Writes the weights and `info` to `path` atomically.
    pub fn save(&self, info: &ClassifierInfo, path: &Path) -> Result<()> {
        let mut file = TensorFile {
            metadata: HashMap::from([(
                META_CLASSIFIER.to_string(),
                serde_json::to_string(info).expect("serialises"),
            )]),
            ..Default::default()
        };
        for t in named_parameters(self) {
            file.tensors.insert(t.name.clone(), t);
        }
        file.write(path)
    }
}

/// Features and class probabilities of a set of images.
#[derive(Debug, Clone, Default)]
pub struct Embedding {
    /// `n` rows of [`FEATURES`] values.
    pub features: Vec<Vec<f32>>,
    /// `n` rows of one probability per class.
    pub probs: Vec<Vec<f32>>,
}

impl Embedding {
    /// Appends the rows of `other`.
    pub fn extend(&mut self, other: Embedding) {
        self.features.extend(other.features);
        self.probs.extend(other.probs);
    }
}

fn rows(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, d] = t.dims();
    let values = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor");
    values.chunks(d).map(|c| c.to_vec()).collect()
}

/// Embeds `n` images given as row-major `[n, c, h, w]` values in [-1, 1] (the classifier's
/// shape), in batches.
pub fn embed(classifier: &Classifier, pixels: &[f32], device: &Device) -> Embedding {
    let [c, h, w] = classifier.shape;
    let image = c * h * w;
    let mut out = Embedding::default();
    for chunk in pixels.chunks(256 * image) {
        let n = chunk.len() / image;
        let x = Tensor::<4>::from_data(TensorData::new(chunk.to_vec(), [n, c, h, w]), device);
        let features = classifier.features(x);
        let probs = softmax(classifier.fc2.forward(features.clone()), 1);
        out.features.extend(rows(features));
        out.probs.extend(rows(probs));
    }
    out
}

/// Embeds every image of `set`, in batches.
pub fn embed_set(classifier: &Classifier, set: &ImageSet, device: &Device) -> Embedding {
    let mut out = Embedding::default();
    for start in (0..set.len()).step_by(1024) {
        let count = 1024.min(set.len() - start);
        out.extend(embed(classifier, &set.values(start, count), device));
    }
    out
}

/// Fraction of `set` classified correctly.
pub fn accuracy(classifier: &Classifier, set: &ImageSet, device: &Device) -> f64 {
    let embedding = embed_set(classifier, set, device);
    let correct = embedding
        .probs
        .iter()
        .enumerate()
        .filter(|(i, p)| argmax(p) == set.label(*i) as usize)
        .count();
    correct as f64 / set.len() as f64
}

/// Index of the largest value.
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Trains a classifier on `train` (data set `data`) with `recipe`, measures it on `test` and
/// returns it with its record; `on_epoch(epoch, mean loss)` after every epoch.
pub fn fit(
    train: &ImageSet,
    test: &ImageSet,
    recipe: &ClassifierRecipe,
    data: &str,
    device: &Device,
    on_epoch: impl FnMut(usize, f32),
) -> Result<(Classifier, ClassifierInfo)> {
    let (model, accuracy) = train_classifier(train, test, recipe, device, on_epoch)?;
    let info = ClassifierInfo {
        data: data.to_string(),
        recipe: *recipe,
        test_accuracy: accuracy,
        test_images: test.len(),
        shape: train.shape(),
        classes: train.classes.clone(),
    };
    Ok((model, info))
}

/// A recipe for a data set of `images` images of `shape` that is not MNIST: about 500,000
/// training images seen (2 to 60 epochs), distortions suited to digits or photographs.
pub fn recipe_for(images: usize, shape: [usize; 3]) -> ClassifierRecipe {
    ClassifierRecipe {
        epochs: (480_000 / images.max(1)).clamp(2, 60),
        augment: Some(match shape[0] {
            1 => Augment::DIGITS,
            _ => Augment::NATURAL,
        }),
        ..ClassifierRecipe::PINNED
    }
}

/// The recipe of `flowmatch classifier train` on `images` training images of `shape`: the
/// pinned recipe with these epochs, learning rate and seed, and the distortions [`recipe_for`]
/// suits to the data (rotations for grey digits, flips and shifts for colour pictures), or
/// none when `augment` is false.
pub fn training_recipe(
    images: usize,
    shape: [usize; 3],
    epochs: usize,
    lr: f64,
    augment: bool,
    seed: u64,
) -> ClassifierRecipe {
    ClassifierRecipe {
        epochs,
        lr,
        augment: recipe_for(images, shape).augment.filter(|_| augment),
        seed,
        ..ClassifierRecipe::PINNED
    }
}

/// Trains a classifier on `train` with `recipe` and measures it on `test`; `on_epoch(epoch,
/// mean loss)` after every epoch.
pub fn train_classifier(
    train: &ImageSet,
    test: &ImageSet,
    recipe: &ClassifierRecipe,
    device: &Device,
    mut on_epoch: impl FnMut(usize, f32),
) -> Result<(Classifier, f64)> {
    if recipe.epochs == 0 || recipe.batch_size == 0 || recipe.lr.is_nan() || recipe.lr <= 0.0 {
        return Err(Error::invalid(
            "classifier recipe",
            "epochs, batch size and learning rate must be positive",
        ));
    }
    if !train.is_labelled() || train.classes.len() < 2 {
        return Err(Error::invalid(
            "classifier",
            "the data set has no labels (or one class): a classifier needs two classes or more",
        ));
    }
    let classes = train.classes.len();
    let ad = device.clone().autodiff();
    let mut model = Classifier::build(
        &mut RandomInit::new(recipe.seed),
        train.shape(),
        classes,
        &ad,
    )?;
    let mut optimizer = AdamWConfig::new().with_weight_decay(1e-4).init();
    let mut rng = StdRng::seed_from_u64(recipe.seed ^ 0xA5A5_5A5A);
    let per_epoch = train.len().div_ceil(recipe.batch_size) as u64;
    let total = per_epoch * recipe.epochs as u64;
    let schedule = LrSchedule::WarmupCosine {
        warmup_steps: per_epoch.min(200),
    };
    let mut step = 0;
    for epoch in 0..recipe.epochs {
        let order = EpochOrder::new(train.len(), recipe.batch_size, recipe.seed, epoch);
        let mut sum = 0.0;
        for b in 0..order.num_batches() {
            let (mut values, labels) = train.batch_values(order.batch(b));
            if let Some(augment) = &recipe.augment {
                augment.apply(&mut values, train.shape(), &mut rng);
            }
            let x = train.tensor(values, &ad);
            let mut one_hot = vec![0.0f32; labels.len() * classes];
            for (i, &l) in labels.iter().enumerate() {
                one_hot[i * classes + l as usize] = 1.0;
            }
            let target =
                Tensor::<2>::from_data(TensorData::new(one_hot, [labels.len(), classes]), &ad);
            let loss = (log_softmax(model.logits(x), 1) * target)
                .sum_dim(1)
                .mean()
                .neg();
            sum += loss.clone().into_scalar::<f32>();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            step += 1;
            model = optimizer.step(schedule.rate(recipe.lr, step, total), model, grads);
        }
        on_epoch(epoch, sum / order.num_batches() as f32);
    }
    let model = model.valid();
    let accuracy = accuracy(&model, test, device);
    Ok((model, accuracy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_training_recipe_suits_its_distortions_to_the_data() {
        let grey = training_recipe(8000, [1, 28, 28], 3, 1e-3, true, 5);
        assert_eq!(grey.augment, Some(Augment::DIGITS));
        assert_eq!((grey.epochs, grey.lr, grey.seed), (3, 1e-3, 5));
        assert_eq!(grey.batch_size, ClassifierRecipe::PINNED.batch_size);
        let colour = training_recipe(8000, [3, 32, 32], 3, 1e-3, true, 5);
        assert_eq!(colour.augment, Some(Augment::NATURAL));
        let plain = training_recipe(8000, [3, 32, 32], 3, 1e-3, false, 5);
        assert_eq!(plain.augment, None);
    }
}
