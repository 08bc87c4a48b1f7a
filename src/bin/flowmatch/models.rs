//! `flowmatch models`: the models shipped with flowmatch, with how they were made and what
//! they score.

use anyhow::Result;
use burn::tensor::Device;

use flowmatch::pretrained::MODELS;
use flowmatch::sampling::solvers::TimeGrid;

pub fn run(device: &Device) -> Result<()> {
    for (i, shipped) in MODELS.iter().enumerate() {
        // Loading checks the file's hash and gives the network.
        let model = shipped.load(device)?.model;
        if i > 0 {
            println!();
        }
        println!("{}: {}", shipped.name, shipped.summary);
        println!(
            "  network:  {}, {} parameters ({:.2} MB)",
            model.config().describe(),
            model.parameter_count(),
            shipped.size() as f64 / 1e6
        );
        println!("  data:     {}", shipped.data);
        println!("  recipe:   {}", shipped.recipe);
        println!("  training: {}", shipped.training);
        println!("  quality:  {}", shipped.quality);
        println!("  measured: {}", shipped.measured_by);
        let grid = match shipped.grid {
            TimeGrid::Uniform => String::new(),
            TimeGrid::Shifted(s) => {
                format!(" on the shifted time grid (--time-grid shifted --grid-shift {s})")
            }
        };
        println!(
            "  sampling: {} Euler step(s){grid}, the default of sample, trajectory and serve",
            shipped.steps
        );
        println!("  sha256:   {}", shipped.sha256);
    }
    println!(
        "\nflowmatch sample --pretrained NAME --steps N --out samples.png; model cards: \
         docs/models.md"
    );
    Ok(())
}
