//! Reading inputs: image files (resized with PyTorch's bilinear interpolation and normalised
//! for the model) or `.safetensors` tensors used exactly as given.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::model::check_finite;
use crate::{Error, Result};

/// How a model wants its input: size and per-channel normalisation `(x − mean) / std` of RGB
/// values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// The side of the square input the model was trained at.
    pub size: usize,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

impl std::str::FromStr for Preprocess {
    type Err = Error;

    /// Parses `--preprocess`: comma-separated parts, a preset (`imagenet`: torchvision's
    /// mean/std; `minus-one-to-one`: [-1, 1]; `unit`: [0, 1] as is) and/or `size=N`,
    /// `mean=R/G/B` (or one value for all), `std=R/G/B`, `scale=S` (the model reads RGB
    /// values in [0, S], e.g. 255). The default preset is `imagenet`, the default size 224.
    /// E.g. `minus-one-to-one,size=299` or `mean=0.5,std=0.25`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |m: String| Error::Model(format!("--preprocess `{s}`: {m}"));
        let mut p = Preprocess::imagenet(224);
        let mut scale = 1.0f32;
        let triple = |v: &str| -> Result<[f32; 3]> {
            let xs: Vec<f32> = v
                .split('/')
                .map(|x| {
                    x.trim()
                        .parse::<f32>()
                        .map_err(|_| bad(format!("`{x}` is not a number")))
                })
                .collect::<Result<_>>()?;
            match xs.as_slice() {
                [a] => Ok([*a; 3]),
                [a, b, c] => Ok([*a, *b, *c]),
                _ => Err(bad("give one value or three separated by `/`".into())),
            }
        };
        for part in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            match part.split_once('=') {
                None => {
                    let size = p.size;
                    p = match part {
                        "imagenet" => Preprocess::imagenet(size),
                        "minus-one-to-one" | "inception" => Preprocess::minus_one_to_one(size),
                        "unit" => Preprocess {
                            size,
                            mean: [0.0; 3],
                            std: [1.0; 3],
                        },
                        other => {
                            return Err(bad(format!(
                                "unknown preset `{other}` (imagenet, minus-one-to-one, unit)"
                            )))
                        }
                    }
                }
                Some(("size", v)) => {
                    p.size = v
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| (8..=4096).contains(&n))
                        .ok_or_else(|| bad(format!("size `{v}` is not a number from 8 to 4096")))?
                }
                Some(("mean", v)) => p.mean = triple(v)?,
                Some(("std", v)) => p.std = triple(v)?,
                Some(("scale", v)) => {
                    scale = v
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(|| bad(format!("scale `{v}` is not a positive number")))?
                }
                Some((k, _)) => return Err(bad(format!("unknown key `{k}` (size, mean, std, scale)"))),
            }
        }
        if p.std.iter().any(|&x| !(x.is_finite() && x > 0.0)) || p.mean.iter().any(|x| !x.is_finite()) {
            return Err(bad("std must be positive and mean finite".into()));
        }
        // (S·rgb − mean) / std = (rgb − mean/S) / (std/S).
        p.mean = p.mean.map(|m| m / scale);
        p.std = p.std.map(|d| d / scale);
        Ok(p)
    }
}

impl Preprocess {
    /// torchvision's ImageNet normalisation.
    pub fn imagenet(size: usize) -> Self {
        Self {
            size,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// Inputs scaled to [-1, 1].
    pub fn minus_one_to_one(size: usize) -> Self {
        Self {
            size,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    /// Normalises RGB values in [0, 1].
    ///
    /// # Shapes
    /// - `rgb`: `(N, 3, H, W)`; returns the same shape.
    pub fn normalise(&self, rgb: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(rgb)?;
        Ok(rgb.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }

    /// Inverse of [`Preprocess::normalise`].
    ///
    /// # Shapes
    /// - `x`: `(N, 3, H, W)`; returns the same shape.
    pub fn denormalise(&self, x: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(x)?;
        Ok(x.broadcast_mul(&std)?.broadcast_add(&mean)?)
    }

    /// Mean and standard deviation as `(1, 3, 1, 1)` tensors in `like`'s dtype and device.
    fn stats(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = |v: &[f32; 3]| -> Result<Tensor> {
            Ok(Tensor::new(v, like.device())?
                .reshape((1, 3, 1, 1))?
                .to_dtype(like.dtype())?)
        };
        Ok((t(&self.mean)?, t(&self.std)?))
    }

    /// The size an `h × w` image is resized to: the square input, or with `keep_aspect` the
    /// shorter side to `size` (the longer one rounded down, as torchvision's `Resize(int)`).
    pub fn target_size(&self, h: usize, w: usize, keep_aspect: bool) -> (usize, usize) {
        if !keep_aspect {
            return (self.size, self.size);
        }
        if h <= w {
            (self.size, (self.size as f64 * w as f64 / h as f64) as usize)
        } else {
            ((self.size as f64 * h as f64 / w as f64) as usize, self.size)
        }
    }
}

/// Reads an image file as RGB values in [0, 1] (grayscale, RGBA and 16-bit are converted).
///
/// # Shapes
/// - returns: `(1, 3, H, W)`, f32.
pub fn read_image(path: &Path) -> Result<Tensor> {
    read_image_within(path, DEFAULT_MAX_PIXELS)
}

/// How many pixels an image may have, decoded or resized, unless the caller raises it
/// (`--max-pixels`): 500 million (a 20000×20000 scan).
pub const DEFAULT_MAX_PIXELS: u64 = 500_000_000;

/// The most values a resize may hold in its target or in an interpolation matrix (512 MiB of
/// f32), whatever `--max-pixels` says.
const RESIZE_VALUES: u64 = 1 << 27;

/// The most bytes an image may take decoded in its own format (before any conversion).
const MAX_DECODED_BYTES: u64 = 2 << 30;

/// Images up to this many pixels are converted to float RGB whole; larger ones a band of rows
/// at a time while they are resized, so that memory stays near the decoded image's.
const WHOLE_PIXELS: u64 = 16 << 20;

/// Decodes an image file within the budget: more than `max_pixels` pixels, or more than 2 GiB
/// decoded, is refused from its header, before it is decoded (a 438 KB PNG can declare
/// 20000×20000 pixels).
fn decode_image(path: &Path, max_pixels: u64) -> Result<image::DynamicImage> {
    use image::ImageDecoder;
    let fail = |message: String| Error::Input {
        path: path.display().to_string(),
        message,
    };
    let unreadable = |e: image::ImageError| {
        fail(format!(
            "not a readable image ({e}); give a PNG, JPEG, … or a .safetensors tensor"
        ))
    };
    let decoder = image::ImageReader::open(path)
        .map_err(|e| fail(format!("cannot open the file: {e}")))?
        .with_guessed_format()
        .map_err(|e| fail(format!("cannot read the file: {e}")))?
        .into_decoder()
        .map_err(unreadable)?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(fail(format!(
            "a {w}x{h} image has {pixels} pixels, over the budget of {max_pixels} (raise it with --max-pixels)"
        )));
    }
    if pixels == 0 {
        return Err(fail(format!("a {w}x{h} image has no pixels")));
    }
    if decoder.total_bytes() > MAX_DECODED_BYTES {
        return Err(fail(format!(
            "a {w}x{h} image takes {} bytes decoded, over the limit of {MAX_DECODED_BYTES}",
            decoder.total_bytes()
        )));
    }
    image::DynamicImage::from_decoder(decoder).map_err(unreadable)
}

/// An image as float RGB in [0, 1], `(1, 3, H, W)`.
fn rgb_tensor(img: &image::DynamicImage) -> Result<Tensor> {
    let rgb = img.to_rgb32f();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let t = Tensor::from_vec(rgb.into_raw(), (h, w, 3), &Device::Cpu)?;
    Ok(t.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?)
}

/// An image resized to `th × tw` as PyTorch's bilinear `F.interpolate` (the separable
/// `A_h · X · A_wᵀ` of [`extremal_ops::resize_bilinear`]); a large image is converted and
/// resized along its width a band of rows at a time.
///
/// # Shapes
/// - returns: `(1, 3, th, tw)`, f32.
fn resized(img: &image::DynamicImage, th: usize, tw: usize) -> Result<Tensor> {
    resized_within(img, th, tw, WHOLE_PIXELS)
}

fn resized_within(img: &image::DynamicImage, th: usize, tw: usize, whole: u64) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if (w as u64) * (h as u64) <= whole {
        return Ok(extremal_ops::resize_bilinear(&rgb_tensor(img)?, th, tw)?);
    }
    let cols = extremal_ops::interpolation_matrix(w, tw, DType::F32, &Device::Cpu)?
        .t()?
        .contiguous()?;
    let rows = extremal_ops::interpolation_matrix(h, th, DType::F32, &Device::Cpu)?;
    const BAND: usize = 256;
    let mut parts = Vec::with_capacity(h.div_ceil(BAND));
    for y0 in (0..h).step_by(BAND) {
        let band = img.crop_imm(0, y0 as u32, w as u32, BAND.min(h - y0) as u32);
        let t = rgb_tensor(&band)?; // (1, 3, k, w)
        parts.push(t.broadcast_matmul(&cols)?); // (1, 3, k, tw)
    }
    let x = Tensor::cat(&parts, 2)?; // (1, 3, h, tw)
    Ok(rows.broadcast_matmul(&x)?)
}

/// [`read_image`] with a budget (see `--max-pixels`): an image of more than `max_pixels`
/// pixels is refused from its header, before it is decoded.
///
/// # Shapes
/// - returns: `(1, 3, H, W)`, f32.
pub fn read_image_within(path: &Path, max_pixels: u64) -> Result<Tensor> {
    rgb_tensor(&decode_image(path, max_pixels)?)
}

/// Reads a model input: a `.safetensors` file's tensor `input` (`(N, 3, H, W)`, already
/// normalised, used exactly), or an image resized to the model's input (bilinear, as PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False)`) and normalised.
///
/// # Shapes
/// - returns: `(N, 3, H, W)` in `dtype` on `device`.
pub fn load_input(path: &Path, pre: &Preprocess, keep_aspect: bool, dtype: DType, device: &Device) -> Result<Tensor> {
    load_input_within(path, pre, keep_aspect, DEFAULT_MAX_PIXELS, dtype, device)
}

/// [`load_input`] with a pixel budget for the decoded image and for its resized size (see
/// [`read_image_within`]).
///
/// # Shapes
/// - returns: `(N, 3, H, W)` in `dtype` on `device`.
pub fn load_input_within(
    path: &Path,
    pre: &Preprocess,
    keep_aspect: bool,
    max_pixels: u64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let fail = |message: String| Error::Input {
        path: path.display().to_string(),
        message,
    };
    let is_st = path
        .extension()
        .map(|e| e.eq_ignore_ascii_case("safetensors"))
        .unwrap_or(false);
    let x = if is_st {
        if !path.exists() {
            return Err(fail("no such file".into()));
        }
        let mut ts = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| fail(format!("not a readable safetensors file: {e}")))?;
        let x = ts.remove("input").ok_or_else(|| {
            let names: Vec<String> = ts.keys().cloned().collect();
            fail(format!("no tensor named `input` (found: {})", names.join(", ")))
        })?;
        if !matches!(x.dtype(), DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            return Err(fail(format!(
                "tensor `input` holds {:?} values; it must be a normalised float tensor (f32)",
                x.dtype()
            )));
        }
        let x = match x.rank() {
            3 => x.unsqueeze(0)?,
            4 => x,
            r => return Err(fail(format!("tensor `input` has rank {r}; expected (N, 3, H, W)"))),
        };
        if x.dim(2)? == 0 || x.dim(3)? == 0 {
            return Err(fail(format!("tensor `input` has shape {:?}: an empty image", x.dims())));
        }
        if x.dim(1)? != 3 {
            return Err(fail(format!(
                "tensor `input` has shape {:?}; expected (N, 3, H, W)",
                x.dims()
            )));
        }
        x.to_dtype(DType::F32)?
    } else {
        let img = decode_image(path, max_pixels)?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (th, tw) = pre.target_size(h, w, keep_aspect);
        // The resize holds the target and one interpolation matrix per axis (out × in).
        let target = th as u64 * tw as u64;
        let weights = th as u64 * h as u64 + tw as u64 * w as u64;
        let limit = max_pixels.min(RESIZE_VALUES);
        if target.max(weights) > limit || th == 0 || tw == 0 {
            return Err(fail(format!(
                "resizing this {w}x{h} image to {tw}x{th} needs {} values, over the limit of {limit}; \
                 drop --keep-aspect",
                target.max(weights)
            )));
        }
        let rgb = resized(&img, th, tw)?;
        drop(img);
        pre.normalise(&rgb)?
    };
    check_finite(&x, "the input").map_err(|_| fail("the tensor holds NaN or infinite values".into()))?;
    Ok(x.to_dtype(dtype)?.to_device(device)?)
}

/// The extensions [`image_files`] takes as images (any case).
pub const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "gif", "bmp", "webp", "safetensors"];

/// The images below `dir`, recursively, sorted by path (files with one of
/// [`IMAGE_EXTENSIONS`]; links to folders are not followed, so a link cycle cannot loop).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let err = |e: std::io::Error| Error::Input {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    if !dir.is_dir() {
        return Err(Error::Input {
            path: dir.display().to_string(),
            message: "is not a folder".into(),
        });
    }
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(err)? {
            let entry = entry.map_err(err)?;
            let kind = entry.file_type().map_err(err)?;
            let path = entry.path();
            if kind.is_dir() {
                todo.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resizing a band of rows at a time gives the whole image's resize.
    #[test]
    fn banded_resize_is_the_whole_resize() {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(301, 700, |x, y| {
            image::Rgb([(x * 7 % 251) as u8, (y * 13 % 253) as u8, ((x + y) % 256) as u8])
        }));
        let whole = resized_within(&img, 64, 48, u64::MAX).unwrap();
        let banded = resized_within(&img, 64, 48, 0).unwrap();
        let d = (whole - banded)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }
}
