//! Image inputs: colour types, bit depths, sizes, and the aspect-keeping resize.

use candle_core::{DType, Device};
use extremal_models::preprocess::read_image;
use extremal_models::{load_input, Preprocess};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("extremal-input-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn grayscale_rgba_and_16_bit_images_become_rgb_in_unit_range() {
    let (w, h) = (5u32, 3u32);
    let gray = image::GrayImage::from_fn(w, h, |x, _| image::Luma([(x * 60) as u8]));
    let p = tmp("gray.png");
    gray.save(&p).unwrap();
    let t = read_image(&p).unwrap();
    assert_eq!(t.dims(), &[1, 3, 3, 5]);
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((v[1] - 60.0 / 255.0).abs() < 1e-6 && v[1] == v[15 + 1] && v[1] == v[30 + 1]);

    let rgba = image::RgbaImage::from_fn(w, h, |_, _| image::Rgba([255, 0, 128, 10]));
    let p = tmp("rgba.png");
    rgba.save(&p).unwrap();
    let t = read_image(&p).unwrap();
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!((v[0], v[15], (v[30] * 255.0).round()), (1.0, 0.0, 128.0));

    let deep = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(w, h, |_, _| image::Rgb([65535, 32768, 0]));
    let p = tmp("deep.png");
    deep.save(&p).unwrap();
    let t = read_image(&p).unwrap();
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((v[0] - 1.0).abs() < 1e-6 && (v[15] - 32768.0 / 65535.0).abs() < 1e-6 && v[30] == 0.0);
}

#[test]
fn images_are_resized_square_or_with_their_aspect() {
    let chelsea = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/chelsea.png");
    let pre = Preprocess::imagenet(224);
    let x = load_input(&chelsea, &pre, false, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[1, 3, 224, 224]);
    // 451×300 with the shorter side to 224: 224×336 (torchvision's Resize(224) rounds down).
    let x = load_input(&chelsea, &pre, true, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[1, 3, 224, 336]);
    assert_eq!(pre.target_size(500, 375, true), (298, 224));
}
