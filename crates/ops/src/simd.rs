//! Which instruction set the hand-written kernels run with, detected once at run time (as the
//! `gemm` crate chooses its own): the same binary uses AVX-512 where the CPU has it, AVX2 +
//! FMA where it has that, and portable code elsewhere.

/// A build of the hand-written kernels. Every kernel gives the same results with each (the
/// vector builds do the scalar code's multiplies and adds in the same order, unfused), so a
/// result does not depend on the CPU it was computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernels {
    /// Plain Rust, auto-vectorised for the baseline target.
    Portable,
    /// AVX2 + FMA (eight f32 lanes).
    Avx2,
    /// AVX-512 F (sixteen f32 lanes, masked tails).
    Avx512,
}

impl Kernels {
    /// The best build this CPU runs (detected once).
    pub fn detected() -> Self {
        static DETECTED: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") && has_avx2() {
                    return Kernels::Avx512;
                }
                if has_avx2() {
                    return Kernels::Avx2;
                }
            }
            Kernels::Portable
        })
    }

    /// Every build this CPU runs, from the portable one up to [`Kernels::detected`] (tests
    /// compare them).
    pub fn available() -> Vec<Self> {
        [Kernels::Portable, Kernels::Avx2, Kernels::Avx512]
            .into_iter()
            .filter(|k| *k <= Self::detected())
            .collect()
    }
}

/// Whether this CPU runs the AVX2 + FMA builds of the kernels (detected once).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
