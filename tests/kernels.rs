//! The hand-written kernels against burn's plain composition: forward values and gradients, on
//! random inputs, with and without autodiff.

use burn::tensor::{Device, Distribution, Tensor};
use flowmatch::kernels;

type Op = fn(Tensor<4>, Tensor<4>, Tensor<1>, usize, usize) -> Tensor<4>;

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Runs `fast` and `plain` on the same random inputs and compares outputs and the gradients of
/// `sum(y · r)` with respect to input, weight and bias.
fn compare(
    fast: Op,
    plain: Op,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    out_channels: usize,
    stride: usize,
    padding: usize,
) {
    let device = Device::flex().autodiff();
    let x = random(x_shape, &device);
    let w = random(w_shape, &device) * 0.2;
    let b = random([out_channels], &device);

    let plain_forward = plain(x.clone(), w.clone(), b.clone(), stride, padding);
    let r = random(plain_forward.dims(), &device);
    let run = |op: Op| {
        let (x, w, b) = (
            x.clone().require_grad(),
            w.clone().require_grad(),
            b.clone().require_grad(),
        );
        let y = op(x.clone(), w.clone(), b.clone(), stride, padding);
        let grads = (y.clone() * r.clone()).sum().backward();
        (
            y,
            x.grad(&grads).unwrap(),
            w.grad(&grads).unwrap(),
            b.grad(&grads).unwrap(),
        )
    };
    let (y1, dx1, dw1, db1) = run(fast);
    let (y2, dx2, dw2, db2) = run(plain);
    assert_eq!(y1.dims(), y2.dims());
    assert!(max_diff(y1, y2) < 1e-4, "forward differs");
    assert!(max_diff(dx1, dx2) < 1e-3, "input gradient differs");
    assert!(max_diff(dw1, dw2) < 1e-2, "weight gradient differs");
    assert!(max_diff(db1, db2) < 1e-2, "bias gradient differs");

    // Without autodiff (the sampling path).
    let flex = Device::flex();
    let (x, w, b) = (x.to_device(&flex), w.to_device(&flex), b.to_device(&flex));
    let y1 = fast(x.clone(), w.clone(), b.clone(), stride, padding);
    let y2 = plain(x, w, b, stride, padding);
    assert!(max_diff(y1, y2) < 1e-4, "forward without autodiff differs");
}

#[test]
fn conv2d_matches_burn() {
    // The model's three cases: 3x3 same, 3x3 stride 2 (odd size), 1x1 output; and a batch that
    // does not divide into equal chunks.
    compare(
        kernels::conv2d,
        kernels::plain_conv2d,
        [5, 6, 9, 9],
        [8, 6, 3, 3],
        8,
        1,
        1,
    );
    compare(
        kernels::conv2d,
        kernels::plain_conv2d,
        [3, 4, 7, 7],
        [6, 4, 3, 3],
        6,
        2,
        1,
    );
    // 3x3 stride 1 with 8+ channels each way: the Winograd path (forward and input gradient).
    compare(
        kernels::conv2d,
        kernels::plain_conv2d,
        [4, 9, 7, 8],
        [10, 9, 3, 3],
        10,
        1,
        1,
    );
    compare(
        kernels::conv2d,
        kernels::plain_conv2d,
        [7, 8, 5, 6],
        [1, 8, 1, 1],
        1,
        1,
        0,
    );
    // Colour images: three input channels in, three output channels out (the direct 1x1 path).
    compare(
        kernels::conv2d,
        kernels::plain_conv2d,
        [4, 3, 16, 16],
        [8, 3, 3, 3],
        8,
        1,
        1,
    );
    compare(
        kernels::conv2d,
        kernels::plain_conv2d,
        [4, 8, 16, 16],
        [3, 8, 1, 1],
        3,
        1,
        0,
    );
}

#[test]
fn conv_transpose2d_matches_burn() {
    compare(
        kernels::conv_transpose2d,
        kernels::plain_conv_transpose2d,
        [5, 8, 7, 7],
        [8, 4, 4, 4],
        4,
        2,
        1,
    );
    compare(
        kernels::conv_transpose2d,
        kernels::plain_conv_transpose2d,
        [3, 6, 4, 5],
        [6, 6, 3, 3],
        6,
        1,
        1,
    );
    // More channels, odd height and width.
    compare(
        kernels::conv_transpose2d,
        kernels::plain_conv_transpose2d,
        [3, 10, 7, 5],
        [10, 12, 4, 4],
        12,
        2,
        1,
    );
}

/// A convolution of `[x, skip]` as two inputs, against the same convolution of the
/// concatenation: outputs and the gradients of both inputs, weight and bias.
fn compare_skip(transposed: bool) {
    let device = Device::flex().autodiff();
    let (x, skip) = (random([5, 6, 7, 7], &device), random([5, 2, 7, 7], &device));
    // 8 input and 9 output channels: the plain convolution takes the Winograd path.
    let w_shape = if transposed {
        [8, 9, 4, 4]
    } else {
        [9, 8, 3, 3]
    };
    let (w, b) = (random(w_shape, &device) * 0.2, random([9], &device));
    let (stride, padding) = if transposed { (2, 1) } else { (1, 1) };
    let reference_shape = if transposed {
        [5, 9, 14, 14]
    } else {
        [5, 9, 7, 7]
    };
    let r = random(reference_shape, &device);
    let run = |two_inputs: bool| {
        let (x, skip, w, b) = (
            x.clone().require_grad(),
            skip.clone().require_grad(),
            w.clone().require_grad(),
            b.clone().require_grad(),
        );
        let (w2, b2) = (w.clone(), b.clone());
        let y = match (transposed, two_inputs) {
            (false, true) => kernels::conv2d_skip(x.clone(), skip.clone(), w2, b2, stride, padding),
            (true, true) => {
                kernels::conv_transpose2d_skip(x.clone(), skip.clone(), w2, b2, stride, padding)
            }
            (false, false) => kernels::plain_conv2d(
                Tensor::cat(vec![x.clone(), skip.clone()], 1),
                w2,
                b2,
                stride,
                padding,
            ),
            (true, false) => kernels::plain_conv_transpose2d(
                Tensor::cat(vec![x.clone(), skip.clone()], 1),
                w2,
                b2,
                stride,
                padding,
            ),
        };
        let grads = (y.clone() * r.clone()).sum().backward();
        let grad4 = |t: &Tensor<4>| t.grad(&grads).unwrap();
        (
            y,
            grad4(&x),
            grad4(&skip),
            grad4(&w),
            b.grad(&grads).unwrap(),
        )
    };
    let (y1, dx1, ds1, dw1, db1) = run(true);
    let (y2, dx2, ds2, dw2, db2) = run(false);
    assert!(max_diff(y1, y2) < 1e-4, "forward differs");
    assert!(max_diff(dx1, dx2) < 1e-3, "input gradient differs");
    assert!(max_diff(ds1, ds2) < 1e-3, "skip gradient differs");
    assert!(max_diff(dw1, dw2) < 1e-2, "weight gradient differs");
    assert!(max_diff(db1, db2) < 1e-2, "bias gradient differs");
}

#[test]
fn skip_inputs_match_the_concatenation() {
    compare_skip(false);
    compare_skip(true);
}

#[test]
fn group_norm_silu_matches_burn() {
    let device = Device::flex().autodiff();
    let (b, c, h, w, groups) = (3, 16, 5, 7, 4);
    let x = random([b, c, h, w], &device) * 2.0 + 0.5;
    let shift = random([b, c], &device);
    let gamma = random([c], &device) + 1.0;
    let beta = random([c], &device);
    let r = random([b, c, h, w], &device);
    type NormOp = fn(Tensor<4>, Tensor<2>, Tensor<1>, Tensor<1>, usize, f32) -> Tensor<4>;
    let run = |op: NormOp| {
        let inputs = (
            x.clone().require_grad(),
            shift.clone().require_grad(),
            gamma.clone().require_grad(),
            beta.clone().require_grad(),
        );
        let (x, s, g, bt) = inputs;
        let y = op(x.clone(), s.clone(), g.clone(), bt.clone(), groups, 1e-5);
        let grads = (y.clone() * r.clone()).sum().backward();
        let grad = |t: &Tensor<1>| t.grad(&grads).unwrap();
        (
            y,
            x.grad(&grads).unwrap(),
            s.grad(&grads).unwrap(),
            grad(&g),
            grad(&bt),
        )
    };
    let (y1, dx1, ds1, dg1, db1) = run(kernels::group_norm_silu);
    let (y2, dx2, ds2, dg2, db2) = run(kernels::plain_group_norm_silu);
    assert!(max_diff(y1, y2) < 1e-5, "forward differs");
    assert!(max_diff(dx1, dx2) < 1e-4, "input gradient differs");
    assert!(max_diff(ds1, ds2) < 1e-4, "shift gradient differs");
    assert!(max_diff(dg1, dg2) < 1e-3, "gamma gradient differs");
    assert!(max_diff(db1, db2) < 1e-3, "beta gradient differs");

    let flex = Device::flex();
    let (x, shift) = (x.to_device(&flex), shift.to_device(&flex));
    let (gamma, beta) = (gamma.to_device(&flex), beta.to_device(&flex));
    let y1 = kernels::group_norm_silu(
        x.clone(),
        shift.clone(),
        gamma.clone(),
        beta.clone(),
        groups,
        1e-5,
    );
    // An input nobody else holds is normalised in place.
    let unique = x.clone() * 1.0;
    let y3 = kernels::group_norm_silu(
        unique,
        shift.clone(),
        gamma.clone(),
        beta.clone(),
        groups,
        1e-5,
    );
    let y2 = kernels::plain_group_norm_silu(x, shift, gamma, beta, groups, 1e-5);
    assert!(
        max_diff(y1, y2.clone()) < 1e-5,
        "forward without autodiff differs"
    );
    assert!(max_diff(y3, y2) < 1e-5, "in-place forward differs");
}

/// A fused GroupNorm (`kernel`) against burn's composition (`plain`), with `gamma` and `beta`
/// of shape `affine`: forward and gradients under autodiff, then the in-place forward.
fn compare_norm<const D: usize>(
    kernel: fn(Tensor<4>, Tensor<D>, Tensor<D>, usize, f32) -> Tensor<4>,
    plain: fn(Tensor<4>, Tensor<D>, Tensor<D>, usize, f32) -> Tensor<4>,
    affine: [usize; D],
) {
    let device = Device::flex().autodiff();
    let (b, c, h, w, groups) = (3, 16, 5, 7, 8);
    let x = random([b, c, h, w], &device) * 2.0 + 0.5;
    let gamma = random(affine, &device) + 1.0;
    let beta = random(affine, &device);
    let r = random([b, c, h, w], &device);
    let run = |op: fn(Tensor<4>, Tensor<D>, Tensor<D>, usize, f32) -> Tensor<4>| {
        let (x, g, bt) = (
            x.clone().require_grad(),
            gamma.clone().require_grad(),
            beta.clone().require_grad(),
        );
        let y = op(x.clone(), g.clone(), bt.clone(), groups, 1e-5);
        let grads = (y.clone() * r.clone()).sum().backward();
        (
            y,
            x.grad(&grads).unwrap(),
            g.grad(&grads).unwrap(),
            bt.grad(&grads).unwrap(),
        )
    };
    let (y1, dx1, dg1, db1) = run(kernel);
    let (y2, dx2, dg2, db2) = run(plain);
    assert!(max_diff(y1, y2) < 1e-5, "forward differs");
    assert!(max_diff(dx1, dx2) < 1e-4, "input gradient differs");
    assert!(max_diff(dg1, dg2) < 1e-3, "gamma gradient differs");
    assert!(max_diff(db1, db2) < 1e-3, "beta gradient differs");

    let flex = Device::flex();
    let (x, gamma, beta) = (
        x.to_device(&flex),
        gamma.to_device(&flex),
        beta.to_device(&flex),
    );
    let unique = x.clone() * 1.0;
    let y1 = kernel(unique, gamma.clone(), beta.clone(), groups, 1e-5);
    let y2 = plain(x, gamma, beta, groups, 1e-5);
    assert!(max_diff(y1, y2) < 1e-5, "in-place forward differs");
}

#[test]
fn modulated_group_norm_silu_matches_burn() {
    // gamma and beta per image and channel.
    compare_norm(
        kernels::group_norm_silu_modulated,
        kernels::plain_group_norm_silu_modulated,
        [3, 16],
    );
}

#[test]
fn group_norm_affine_matches_burn() {
    // No SiLU, gamma and beta per channel.
    compare_norm(
        kernels::group_norm_affine,
        kernels::plain_group_norm_affine,
        [16],
    );
}

#[test]
fn channel_concatenation_matches_burn() {
    let device = Device::flex().autodiff();
    // `a` is a channel slice of a larger map (a strided view, gathered run by run).
    let wide = random([2, 8, 16, 16], &device);
    let b = random([2, 3, 16, 16], &device);
    let r = random([2, 8, 16, 16], &device);
    type CatOp = fn(Tensor<4>, Tensor<4>) -> Tensor<4>;
    let plain: CatOp = |a, b| Tensor::cat(vec![a, b], 1);
    let run = |op: CatOp| {
        let (wide, b) = (wide.clone().require_grad(), b.clone().require_grad());
        let y = op(wide.clone().narrow(1, 2, 5), b.clone());
        // A convolution downstream takes the gradient from the kernels' own backward pass.
        let w = Tensor::<4>::ones([4, 8, 3, 3], &y.device()) * 0.1;
        let z = kernels::conv2d(y.clone(), w, Tensor::zeros([4], &y.device()), 1, 1);
        let grads = ((y.clone() * r.clone()).sum() + z.sum()).backward();
        (y, wide.grad(&grads).unwrap(), b.grad(&grads).unwrap())
    };
    let (y1, dw1, db1) = run(kernels::concat_channels);
    let (y2, dw2, db2) = run(plain);
    assert_eq!(y1.dims(), [2, 8, 16, 16]);
    assert_eq!(max_diff(y1, y2), 0.0, "forward differs");
    assert!(
        max_diff(dw1, dw2) < 1e-4,
        "gradient of the first input differs"
    );
    assert!(
        max_diff(db1, db2) < 1e-4,
        "gradient of the second input differs"
    );

    let flex = Device::flex();
    let (wide, b) = (wide.to_device(&flex), b.to_device(&flex));
    let y1 = kernels::concat_channels(wide.clone().narrow(1, 2, 5), b.clone());
    let y2 = Tensor::cat(vec![wide.narrow(1, 2, 5), b], 1);
    assert_eq!(max_diff(y1, y2), 0.0, "forward without autodiff differs");
}

#[test]
fn attention_matches_burn() {
    let device = Device::flex().autodiff();
    // Two heads of 8 channels over 7x7 positions; projections large enough for peaked weights.
    let qkv = random([3, 48, 7, 7], &device) * 2.0;
    let r = random([3, 16, 7, 7], &device);
    type AttentionOp = fn(Tensor<4>, usize) -> Tensor<4>;
    let run = |op: AttentionOp| {
        let qkv = qkv.clone().require_grad();
        let y = op(qkv.clone(), 2);
        let grads = (y.clone() * r.clone()).sum().backward();
        (y, qkv.grad(&grads).unwrap())
    };
    let (y1, dx1) = run(kernels::attention);
    let (y2, dx2) = run(kernels::plain_attention);
    assert!(max_diff(y1, y2) < 1e-5, "forward differs");
    assert!(max_diff(dx1, dx2) < 1e-4, "gradient differs");

    // Without autodiff, and from a strided view (a channel slice) of a larger map.
    let wide = random([3, 52, 7, 7], &Device::flex()) * 2.0;
    let y1 = kernels::attention(wide.clone().narrow(1, 2, 48), 2);
    let y2 = kernels::plain_attention(wide.narrow(1, 2, 48), 2);
    assert!(max_diff(y1, y2) < 1e-5, "forward without autodiff differs");
}
