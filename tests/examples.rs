//! The examples run as a user would run them: the 2-D "hello world" trains a user's own model
//! with flowmatch's loop, and its samples must match the data's distribution.

#[allow(dead_code)]
#[path = "../examples/two_moons.rs"]
mod two_moons;

/// The fraction of `samples` within `radius` of some point of `data`, and the share of the
/// samples whose nearest data point lies on the first moon.
fn closeness(data: &[[f32; 2]], labels: &[usize], samples: &[[f32; 2]], radius: f32) -> (f64, f64) {
    let (mut near, mut first) = (0, 0);
    for s in samples {
        let nearest = (0..data.len())
            .map(|i| ((data[i][0] - s[0]).powi(2) + (data[i][1] - s[1]).powi(2), i))
            .fold((f32::MAX, 0), |a, b| if b.0 < a.0 { b } else { a });
        near += usize::from(nearest.0.sqrt() <= radius);
        first += usize::from(labels[nearest.1] == 0);
    }
    let n = samples.len() as f64;
    (near as f64 / n, first as f64 / n)
}

/// The rule: at least 90 % of 1,000 samples lie within 0.15 of a data point (the data's noise
/// is ±0.05; standard normal noise has about 20 % there), and each moon holds 35-65 % of them.
/// The untrained model fails the same rule, so the test can fail.
#[test]
fn two_moons_samples_follow_the_data() {
    let (data, labels) = two_moons::two_moons(4096, 0);
    let (_, samples, paths) = two_moons::run(2000, 0).unwrap();
    let (near, first) = closeness(&data, &labels, &samples, 0.15);
    eprintln!("near {near:.3}, first moon {first:.3}");
    assert!(
        near >= 0.9,
        "only {near:.3} of the samples are near the data"
    );
    assert!(
        (0.35..=0.65).contains(&first),
        "the first moon holds {first:.3} of the samples"
    );
    assert_eq!(paths.len(), 12);
    assert!(paths.iter().all(|p| p.len() == 51));

    let (_, untrained, _) = two_moons::run(1, 0).unwrap();
    let (near, _) = closeness(&data, &labels, &untrained, 0.15);
    assert!(
        near < 0.6,
        "an untrained model passes the rule ({near:.3}): it cannot fail"
    );
}
