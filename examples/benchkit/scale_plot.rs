//! The plot of `scripts/bench --scale`: CPU per request against the size of the table
//! (routes, API keys), on a log axis, with the smallest size's level for reference.

use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

fn points(report: &Value, part: &str) -> Vec<(f64, f64)> {
    report[part]["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["n"].as_f64()?, r["cpu_us_per_req"].as_f64().filter(|c| c.is_finite())?)))
        .collect()
}

pub fn draw(report: &Value, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let series = [("routes", "routes", RED), ("API keys", "keys", BLUE)];
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p, _)| points(report, p)).collect();
    let x_max = all.iter().map(|p| p.0).fold(10.0, f64::max) * 2.0;
    let y_max = all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.3;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Gatehouse: CPU per request as the config grows", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((5.0..x_max).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("entries in the table (log)")
        .y_desc("proxy CPU µs per request")
        .draw()?;
    for (name, part, color) in series {
        let pts = points(report, part);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
