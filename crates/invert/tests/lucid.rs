//! The visualization's image parameterisation against Lucent's own (`param.image`, Fourier and
//! pixel, decorrelated colour, sigmoid) on fixed parameters, from
//! `scripts/visualize_reference.py fixture`; and the random views' shapes.

use candle_core::{DType, Device, Tensor};
use extremal_invert::{colour_decorrelation, rescale, rotate, translate, ImageParam, Parameterisation, Robustness};
use extremal_ops::random::SeededRng;

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fixture() -> R<std::collections::HashMap<String, Tensor>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/lucid_image.safetensors"
    );
    Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> R<f64> {
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?)
}

#[test]
fn lucid_images_match_lucent_on_fixed_parameters() -> R<()> {
    let f = fixture()?;
    let m: Vec<f64> = colour_decorrelation().iter().flatten().copied().collect();
    let m = Tensor::from_vec(m, (3, 3), &Device::Cpu)?;
    let d = max_diff(&m, &f["decorrelation"])?;
    assert!(d < 1e-5, "decorrelation matrix differs by {d}");
    for (name, kind) in [
        ("fourier", Parameterisation::Fourier),
        ("fourier_square", Parameterisation::Fourier),
        ("pixel", Parameterisation::Pixel),
    ] {
        let params = &f[&format!("{name}_params")];
        let want = &f[&format!("{name}_image")];
        let width = want.dim(3)?;
        for dtype in [DType::F32, DType::F64] {
            let p = ImageParam::lucid_from(kind, &params.to_dtype(dtype)?, width)?;
            let got = p.image()?;
            assert_eq!(got.dims(), want.dims(), "{name}");
            let d = max_diff(&got, want)?;
            println!("{name} {dtype:?}: max |extremal − Lucent| = {d:.2e}");
            assert!(d < 1e-5, "{name} {dtype:?}: the image differs from Lucent's by {d}");
        }
    }
    // Parameters that do not fit the image are refused.
    let bad = Tensor::zeros((1, 3, 8, 4, 2), DType::F32, &Device::Cpu)?;
    assert!(ImageParam::lucid_from(Parameterisation::Fourier, &bad, 8).is_err());
    Ok(())
}

#[test]
fn lucid_views_have_lucents_shapes() -> R<()> {
    let x = Tensor::ones((2, 3, 10, 10), DType::F32, &Device::Cpu)?;
    // translate: zeros move in from the top and the left.
    let t = translate(&x, 2, 3)?;
    assert_eq!(t.dims(), x.dims());
    assert_eq!(t.sum_all()?.to_scalar::<f32>()?, (2 * 3 * 8 * 7) as f32);
    // rescale: ceil(s·H), and padded back when smaller.
    assert_eq!(rescale(&x, 1.1)?.dims(), &[2, 3, 11, 11]);
    assert_eq!(rescale(&x, 0.9)?.dims(), &[2, 3, 11, 11]); // 9 + 2 × ceil(0.5), as Lucent
    assert_eq!(rescale(&x, 0.8)?.dims(), &[2, 3, 10, 10]);
    // rotate keeps the size; a constant image stays constant in its centre.
    let r = rotate(&x, 10.0)?;
    assert_eq!(r.dims(), x.dims());
    let centre = r.narrow(2, 4, 2)?.narrow(3, 4, 2)?;
    assert!(max_diff(&centre, &centre.ones_like()?)? < 1e-6);
    // Lucid's standard views: 224 padded by 12, moved, scaled ±10 %, turned, moved.
    let mut rng = SeededRng::new(1);
    let big = Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu)?;
    for _ in 0..5 {
        let v = Robustness::default().apply(&big, &mut rng)?;
        let side = v.dim(2)?;
        assert!((224..=274).contains(&side), "view side {side}");
    }
    assert_eq!(Robustness::none().apply(&big, &mut rng)?.dims(), big.dims());
    Ok(())
}
