//! Receptive fields: which input pixels an activation at a site can depend on, computed from
//! the layers' footprints (kernel, stride, dilation, padding) along the graph, or probed by
//! gradients for a network that does not describe its layers.

use candle_core::{DType, Device};

use crate::{Error, Network, Result};

/// How a layer's output positions read its input, for receptive fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Footprint {
    /// Not described: a site after it has no computed receptive field (it can be probed).
    #[default]
    Unknown,
    /// Each output position reads the same input position only (activations, batch norm,
    /// per-channel scaling).
    Pointwise,
    /// A sliding window (convolution, pooling).
    Window(Window),
    /// Every output reads the whole input (global pooling, fully connected layers).
    Global,
}

/// A sliding window, per axis `(vertical, horizontal)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Kernel size.
    pub kernel: (usize, usize),
    /// Stride.
    pub stride: (usize, usize),
    /// Dilation.
    pub dilation: (usize, usize),
    /// Padding.
    pub padding: WindowPadding,
    /// Output size rounded up (pooling's ceil mode) instead of down.
    pub ceil_mode: bool,
}

/// The padding of a [`Window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPadding {
    /// Fixed padding `(top, bottom, left, right)`.
    Fixed(usize, usize, usize, usize),
    /// TensorFlow "SAME" (computed from the input size; the odd pixel after).
    Same,
    /// ONNX `SAME_LOWER` (the odd pixel before).
    SameLower,
}

impl Window {
    /// Along one axis (0 vertical, 1 horizontal) of an input of `size`: the padding before
    /// and the output size.
    fn axis(&self, axis: usize, size: usize) -> (usize, usize) {
        let pick = |p: (usize, usize)| if axis == 0 { p.0 } else { p.1 };
        let (k, s, d) = (pick(self.kernel), pick(self.stride).max(1), pick(self.dilation).max(1));
        let span = d * (k.max(1) - 1) + 1;
        let (before, after) = match self.padding {
            WindowPadding::Fixed(t, b, l, r) => {
                if axis == 0 {
                    (t, b)
                } else {
                    (l, r)
                }
            }
            WindowPadding::Same | WindowPadding::SameLower => {
                let out = size.div_ceil(s);
                let total = ((out.max(1) - 1) * s + span).saturating_sub(size);
                let (small, big) = (total / 2, total - total / 2);
                if self.padding == WindowPadding::Same {
                    (small, big)
                } else {
                    (big, small)
                }
            }
        };
        let room = (size + before + after).saturating_sub(span);
        let mut out = if self.ceil_mode { room.div_ceil(s) } else { room / s } + 1;
        // Pooling's ceil mode drops a last window that would start in the padding.
        if self.ceil_mode && (out - 1) * s >= size + before {
            out -= 1;
        }
        (before, out)
    }
}

/// The receptive field of a site along one axis: output position `i` reads input pixels
/// `offset + i·stride … offset + i·stride + size − 1` (clipped to the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AxisField {
    /// Extent in input pixels.
    pub size: usize,
    /// Input pixels between neighbouring output positions.
    pub stride: usize,
    /// Where output position 0's field starts (negative: in the padding).
    pub offset: i64,
}

/// The receptive field of a site: vertical and horizontal [`AxisField`]s, and the site's
/// spatial size for the input size it was computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceptiveField {
    /// Along rows.
    pub rows: AxisField,
    /// Along columns.
    pub columns: AxisField,
    /// The input size `(H, W)` it was computed for.
    pub input: (usize, usize),
    /// The site's spatial size `(H′, W′)` at that input size.
    pub output: (usize, usize),
}

impl ReceptiveField {
    /// The input region read by output position `(i, j)`, clipped to the input: rows
    /// `y0..y1` and columns `x0..x1`, as `[y0, x0, y1, x1]`.
    pub fn region(&self, i: usize, j: usize) -> [usize; 4] {
        let clip = |a: &AxisField, p: usize, len: usize| {
            let start = a.offset + (p * a.stride) as i64;
            let end = start + a.size as i64;
            (start.clamp(0, len as i64) as usize, end.clamp(0, len as i64) as usize)
        };
        let (y0, y1) = clip(&self.rows, i, self.input.0);
        let (x0, x1) = clip(&self.columns, j, self.input.1);
        [y0, x0, y1, x1]
    }
}

/// One axis while walking the graph: the current tensor's size and its field in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Walk {
    size: usize,
    field: AxisField,
}

impl Walk {
    fn start(size: usize) -> Self {
        Self {
            size,
            field: AxisField {
                size: 1,
                stride: 1,
                offset: 0,
            },
        }
    }
}

/// The state of both axes, `None` once an undescribed layer was passed.
pub(crate) type Walks = Option<[Walk; 2]>;

/// The start of a walk at an `(H, W)` input.
pub(crate) fn start(input: (usize, usize)) -> Walks {
    Some([Walk::start(input.0), Walk::start(input.1)])
}

/// `walks` after a layer with footprint `f`.
pub(crate) fn through(walks: Walks, f: &Footprint, input: (usize, usize)) -> Walks {
    let w = walks?;
    match f {
        Footprint::Unknown => None,
        Footprint::Pointwise => Some(w),
        Footprint::Global => Some([0, 1].map(|a| {
            let len = if a == 0 { input.0 } else { input.1 };
            Walk {
                size: 1,
                field: AxisField {
                    size: len,
                    stride: len.max(1),
                    offset: 0,
                },
            }
        })),
        Footprint::Window(win) => Some([0, 1].map(|a| {
            let Walk { size, field } = w[a];
            let pick = |p: (usize, usize)| if a == 0 { p.0 } else { p.1 };
            let (k, s, d) = (pick(win.kernel), pick(win.stride).max(1), pick(win.dilation).max(1));
            let (before, out) = win.axis(a, size);
            Walk {
                size: out,
                field: AxisField {
                    size: field.size + (k.max(1) - 1) * d * field.stride,
                    stride: field.stride * s,
                    offset: field.offset - (before * field.stride) as i64,
                },
            }
        })),
    }
}

/// The union of branches that read the same input and whose outputs are combined position
/// by position (a residual sum, a concatenation).
pub(crate) fn union(branches: &[Walks]) -> Walks {
    let mut it = branches.iter();
    let mut acc = (*it.next()?)?;
    for b in it {
        let b = (*b)?;
        for a in 0..2 {
            let (x, y) = (acc[a].field, b[a].field);
            if x.stride != y.stride || acc[a].size != b[a].size {
                return None;
            }
            let start = x.offset.min(y.offset);
            let end = (x.offset + x.size as i64).max(y.offset + y.size as i64);
            acc[a].field = AxisField {
                size: (end - start) as usize,
                stride: x.stride,
                offset: start,
            };
        }
    }
    Some(acc)
}

/// The field of a finished walk.
pub(crate) fn finish(walks: Walks, input: (usize, usize)) -> Option<ReceptiveField> {
    let w = walks?;
    Some(ReceptiveField {
        rows: w[0].field,
        columns: w[1].field,
        input,
        output: (w[0].size, w[1].size),
    })
}

/// The receptive field of `site` measured by gradients: for each of `seeds` random inputs of
/// size `input`, the input pixels where the gradient of the site's activation at `(i, j)`
/// (summed over channels) is not zero; returns the bounding box of their union as
/// `[y0, x0, y1, x1]` (exclusive ends), or `None` if no pixel moves it.
///
/// This is the definition that [`Network::receptive_field`] must meet; it costs one forward
/// and backward pass per seed.
pub fn probe_region(
    net: &dyn Network,
    site: &str,
    input: (usize, usize),
    position: (usize, usize),
    seeds: u64,
) -> Result<Option<[usize; 4]>> {
    let (h, w) = input;
    let mut union: Option<[usize; 4]> = None;
    for seed in 0..seeds {
        let mut rng = extremal_ops::random::SeededRng::new(0xF1E1D ^ seed);
        let noise = rng
            .normal_tensor(&[1, 3, h, w], 1.0, &Device::Cpu)
            .map_err(|e| Error::Network(Box::new(e)))?;
        let x = candle_core::Var::from_tensor(&noise.to_dtype(DType::F32)?)?;
        let phi = net.forward_to(x.as_tensor(), site)?;
        let (_, _, ph, pw) = phi.dims4().map_err(|_| Error::Site {
            site: site.into(),
            message: "the activation has no positions (N, C, H, W)".into(),
        })?;
        let (i, j) = position;
        if i >= ph || j >= pw {
            return Err(Error::Site {
                site: site.into(),
                message: format!("position ({i}, {j}) is outside the {ph}×{pw} activation"),
            });
        }
        let at = phi.narrow(2, i, 1)?.narrow(3, j, 1)?.sum_all()?;
        let grads = at.backward()?;
        let Some(g) = grads.get(x.as_tensor()) else { continue };
        let moved: Vec<f32> = g.abs()?.sum(1)?.squeeze(0)?.flatten_all()?.to_vec1()?;
        for (p, v) in moved.iter().enumerate() {
            if *v != 0.0 {
                let (y, x) = (p / w, p % w);
                let b = union.get_or_insert([y, x, y + 1, x + 1]);
                *b = [b[0].min(y), b[1].min(x), b[2].max(y + 1), b[3].max(x + 1)];
            }
        }
    }
    Ok(union)
}
