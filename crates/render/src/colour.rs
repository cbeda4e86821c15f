//! Colour maps: the sequential ones from `colorous` (matplotlib's viridis and inferno, Google's
//! turbo, grey) and jet by its MATLAB definition; red–blue for signed values.

/// A sequential colour map for maps whose values have one sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Colormap {
    /// matplotlib's perceptually uniform default (dark blue → yellow).
    #[default]
    Viridis,
    /// MATLAB's jet (blue → cyan → yellow → red), as TorchRay and many papers show maps.
    Jet,
    /// Google's turbo, an improved rainbow.
    Turbo,
    /// matplotlib's inferno (black → red → yellow).
    Inferno,
    /// Black to white.
    #[cfg_attr(feature = "clap", value(alias = "grey"))]
    Gray,
}

impl Colormap {
    /// Every colour map.
    pub const ALL: [Colormap; 5] = [
        Colormap::Viridis,
        Colormap::Jet,
        Colormap::Turbo,
        Colormap::Inferno,
        Colormap::Gray,
    ];

    /// The map's name (`viridis`, `jet`, …).
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Viridis => "viridis",
            Colormap::Jet => "jet",
            Colormap::Turbo => "turbo",
            Colormap::Inferno => "inferno",
            Colormap::Gray => "gray",
        }
    }

    /// The colour at `t ∈ [0, 1]` (clamped; NaN is 0).
    pub fn colour(self, t: f32) -> [u8; 3] {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        let c = match self {
            Colormap::Viridis => colorous::VIRIDIS.eval_continuous(t as f64),
            Colormap::Turbo => colorous::TURBO.eval_continuous(t as f64),
            Colormap::Inferno => colorous::INFERNO.eval_continuous(t as f64),
            // colorous's greys run from white to black.
            Colormap::Gray => colorous::GREYS.eval_continuous(1.0 - t as f64),
            Colormap::Jet => return jet(t),
        };
        [c.r, c.g, c.b]
    }
}

/// MATLAB's jet: each channel a trapezoid of `4t` (no crate ships it; the definition is this
/// formula, not a table).
fn jet(t: f32) -> [u8; 3] {
    let f = |x: f32| ((1.5 - (4.0 * t - x).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [f(3.0), f(2.0), f(1.0)]
}

/// The diverging colour for a signed value scaled to `s ∈ [-1, 1]` (clamped): blue for
/// negative, white at zero, red for positive (ColorBrewer's RdBu, as Captum shows signed
/// attributions).
pub fn diverging(s: f32) -> [u8; 3] {
    let s = if s.is_nan() { 0.0 } else { s.clamp(-1.0, 1.0) };
    // colorous's RED_BLUE runs from red (0) to blue (1).
    let c = colorous::RED_BLUE.eval_continuous(0.5 - 0.5 * s as f64);
    [c.r, c.g, c.b]
}
