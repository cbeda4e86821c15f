//! Overlays, colour maps, scales and plots.

use candle_core::{Device, Tensor};
use extremal_render::{
    diverging, fit, heat_image, line_plot, overlay, percentile, Colormap, HeatScale, HeatStyle, LinePlot, ValueRange,
};

/// A non-square photograph, flat grey.
fn photo(h: usize, w: usize) -> Tensor {
    Tensor::full(0.5f32, (3, h, w), &Device::Cpu).unwrap()
}

/// A ramp from 0 (left) to 1 (right) at a model's square resolution.
fn ramp(side: usize) -> Tensor {
    let row = Tensor::arange(0f32, side as f32, &Device::Cpu).unwrap() / (side as f64 - 1.0);
    row.unwrap().unsqueeze(0).unwrap().repeat((side, 1)).unwrap()
}

#[test]
fn every_colormap_runs_from_its_first_colour_to_its_last() {
    // The ends of each map, as matplotlib gives them (jet's by its definition).
    let ends = [
        (Colormap::Viridis, [68, 1, 84], [253, 231, 37]),
        (Colormap::Jet, [0, 0, 128], [128, 0, 0]),
        (Colormap::Turbo, [35, 23, 27], [144, 12, 0]),
        (Colormap::Inferno, [0, 0, 4], [252, 255, 164]),
        (Colormap::Gray, [0, 0, 0], [255, 255, 255]),
    ];
    assert_eq!(ends.len(), Colormap::ALL.len());
    for (map, first, last) in ends {
        let near = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(x, y)| (*x as i32 - y as i32).abs() <= 3);
        assert!(near(map.colour(0.0), first), "{}: {:?}", map.name(), map.colour(0.0));
        assert!(near(map.colour(1.0), last), "{}: {:?}", map.name(), map.colour(1.0));
        // Clamped outside [0, 1]; NaN is the first colour.
        assert_eq!(map.colour(-3.0), map.colour(0.0));
        assert_eq!(map.colour(7.0), map.colour(1.0));
        assert_eq!(map.colour(f32::NAN), map.colour(0.0));
        // 33 samples, all told apart from their neighbours (the map is not flat anywhere).
        let samples: Vec<[u8; 3]> = (0..=32).map(|i| map.colour(i as f32 / 32.0)).collect();
        assert!(samples.windows(2).all(|w| w[0] != w[1]), "{}", map.name());
    }
    // Grey is monotone in brightness.
    let grey: Vec<u8> = (0..=10).map(|i| Colormap::Gray.colour(i as f32 / 10.0)[0]).collect();
    assert!(grey.windows(2).all(|w| w[0] < w[1]), "{grey:?}");
}

#[test]
fn overlays_have_the_photographs_size_and_follow_the_map() {
    // A 224² map over a 300×451 photograph: the picture is 451×300, and the ramp's left
    // edge shows the first colour, its right edge the last, blended at alpha.
    let style = HeatStyle {
        colormap: Colormap::Gray,
        alpha: 1.0,
        clip_percentile: 100.0,
        range: ValueRange::Data,
    };
    let pic = overlay(&photo(300, 451), &ramp(224), &style).unwrap();
    assert_eq!(pic.dimensions(), (451, 300));
    assert!(pic.get_pixel(0, 150)[0] < 5 && pic.get_pixel(450, 150)[0] > 250);
    let (left, mid, right) = (
        pic.get_pixel(100, 150)[0],
        pic.get_pixel(225, 150)[0],
        pic.get_pixel(350, 150)[0],
    );
    assert!(
        left < mid && mid < right && (60..200).contains(&mid),
        "{left} {mid} {right}"
    );
    // A (1, 1, h, w) map is taken too, and alpha 0 shows only the photograph.
    let clear = HeatStyle { alpha: 0.0, ..style };
    let pic = overlay(
        &photo(40, 30),
        &ramp(8).unsqueeze(0).unwrap().unsqueeze(0).unwrap(),
        &clear,
    )
    .unwrap();
    assert!(pic.pixels().all(|p| p.0 == [128, 128, 128]));
    // Bad arguments are errors, not panics.
    assert!(overlay(&photo(4, 4), &ramp(4), &HeatStyle { alpha: 1.5, ..style }).is_err());
    assert!(overlay(
        &photo(4, 4),
        &ramp(4),
        &HeatStyle {
            clip_percentile: 0.0,
            ..style
        }
    )
    .is_err());
    assert!(overlay(
        &photo(4, 4),
        &Tensor::zeros((2, 2, 2, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
        &style
    )
    .is_err());
    assert!(overlay(
        &Tensor::zeros((1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
        &ramp(4),
        &style
    )
    .is_err());
}

#[test]
fn signed_maps_diverge_around_zero_and_clip_outliers() {
    // Negative is blue, zero white, positive red.
    let (neg, zero, pos) = (diverging(-1.0), diverging(0.0), diverging(1.0));
    assert!(neg[2] > neg[0] && pos[0] > pos[2], "{neg:?} {pos:?}");
    assert!(zero.iter().all(|c| *c > 230), "{zero:?}");
    // 99 values in [-1, 1] and one outlier of 1000: the limit is the 99th percentile of
    // |value|, so the outlier does not wash the others out.
    let mut values: Vec<f32> = (0..99).map(|i| (i as f32 - 49.0) / 49.0).collect();
    values.push(1000.0);
    let style = HeatStyle {
        range: ValueRange::Signed,
        ..HeatStyle::default()
    };
    assert_eq!(style.scale(&values), HeatScale::Diverging { limit: 1.0 });
    assert_eq!(percentile(&values, 100.0), 1000.0);
    assert_eq!(percentile(&[3.0, 1.0, 2.0, f32::NAN], 50.0), 2.0);
    assert_eq!(percentile(&[], 50.0), 0.0);
    // Over the photograph, zero leaves it as it is (its weight falls to 0 there).
    let map = Tensor::new(&[[-1f32, 0.0], [0.5, 1.0]], &Device::Cpu).unwrap();
    let pic = overlay(&photo(2, 2), &map, &HeatStyle { alpha: 1.0, ..style }).unwrap();
    assert_eq!(pic.get_pixel(1, 0).0, [128, 128, 128]);
    assert!(pic.get_pixel(0, 0)[2] > pic.get_pixel(0, 0)[0], "negative is blue");
    assert!(pic.get_pixel(1, 1)[0] > pic.get_pixel(1, 1)[2], "positive is red");
    // A mask keeps its fixed range: all ones is the last colour, not the middle one.
    let ones = Tensor::ones((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let fixed = HeatStyle {
        range: ValueRange::Fixed(0.0, 1.0),
        ..HeatStyle::default()
    };
    assert_eq!(
        heat_image(&ones, &fixed).unwrap().get_pixel(0, 0).0,
        Colormap::Viridis.colour(1.0)
    );
}

#[test]
fn plots_and_sheets() {
    let points = [(1.0, 0.5), (2.0, 3.0), (5.0, 8.0), (10.0, 9.5)];
    let plot = LinePlot {
        points: &points,
        reference: Some((9.0, "original score")),
        log_x: true,
        x_label: "channels kept",
        y_label: "score",
    };
    let img = line_plot(&plot);
    assert_eq!(img.dimensions(), (640, 400));
    // Text is drawn: the axis labels' ink is there (black pixels beyond the axes' lines).
    let ink = img.pixels().filter(|p| p.0 == [0, 0, 0]).count();
    assert!(ink > 1500, "{ink}");
    // Degenerate input draws without panicking.
    line_plot(&LinePlot {
        points: &[(f64::NAN, 1.0)],
        reference: None,
        log_x: false,
        x_label: "",
        y_label: "",
    });
    let big = image::RgbImage::new(900, 300);
    assert_eq!(fit(&big, 300).dimensions(), (300, 100));
    assert_eq!(fit(&big, 1000).dimensions(), (900, 300));
}
