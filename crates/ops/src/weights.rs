//! Layouts derived from a convolution's constant weights, computed once per weight tensor and
//! kept: Winograd's transformed filters, the transposed weights of the input gradient's gemm (a
//! row-major `Wᵀ` runs that gemm 1.06–1.34× faster than `W` read through strides, at
//! ResNet-50's 1 × 1 shapes), and excitation backprop's excitatory weights.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, TensorId, WithDType};
use rayon::prelude::*;

/// What is derived from a weight tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Layout {
    /// Winograd F(2×2, 3×3)'s transformed filters.
    Winograd,
    /// The same for the input gradient's convolution (flipped, transposed filters).
    WinogradTransposed,
    /// `Wᵀ` (`C_in·kh·kw × C_out`, row-major) of an ungrouped convolution.
    Transposed,
    /// `max(W, 0)`, excitation backprop's excitatory weights, as a tensor (whose own derived
    /// layouts are then kept too).
    Positive,
}

/// The derived layouts of each weight tensor seen (by id: candle's ids are never reused, and a
/// constant tensor's values never change).
#[derive(Default)]
struct Cache {
    entries: HashMap<(TensorId, Layout), Arc<dyn Any + Send + Sync>>,
    /// Layouts asked for once and not built yet ([`transposed`]'s).
    asked: std::collections::HashSet<(TensorId, Layout)>,
    bytes: usize,
}

/// Past this many bytes the cache starts over (weights built per call would otherwise pile up).
const CACHE_BYTES: usize = 1 << 30;

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// The `layout` of the weight tensor `id`, built by `build` (the value and its size in bytes)
/// the first time.
fn cached<V: Clone + Send + Sync + 'static, E>(
    id: TensorId,
    layout: Layout,
    build: impl FnOnce() -> Result<(V, usize), E>,
) -> Result<V, E> {
    let key = (id, layout);
    if let Some(hit) = lock().as_ref().and_then(|c| c.entries.get(&key).cloned()) {
        if let Some(v) = hit.downcast_ref::<V>() {
            return Ok(v.clone());
        }
    }
    let (v, bytes) = build()?;
    let mut guard = lock();
    let cache = guard.get_or_insert_with(Cache::default);
    if cache.bytes + bytes > CACHE_BYTES {
        *cache = Cache::default();
    }
    cache.entries.insert(key, Arc::new(v.clone()));
    cache.bytes += bytes;
    Ok(v)
}

/// The `layout` of the weight tensor `id`, built by `build` the first time.
pub(crate) fn derived<T: WithDType>(id: TensorId, layout: Layout, build: impl FnOnce() -> Vec<T>) -> Arc<Vec<T>> {
    let built: Result<_, std::convert::Infallible> = cached(id, layout, || {
        let v = Arc::new(build());
        let bytes = v.len() * std::mem::size_of::<T>();
        Ok((v, bytes))
    });
    match built {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// `max(weight, 0)` (excitation backprop's excitatory weights), kept per constant weight tensor
/// ([`Layout::Positive`]), so that the kernels' layouts derived from it are kept as well; a
/// variable's is computed anew.
pub(crate) fn positive(weight: &Tensor) -> candle_core::Result<Tensor> {
    if weight.track_op() {
        return weight.relu();
    }
    cached(weight.id(), Layout::Positive, || {
        let p = weight.relu()?;
        let bytes = p.elem_count() * p.dtype().size_in_bytes();
        Ok((p, bytes))
    })
}

/// The cache, recovered if a thread panicked while holding it (it holds no invariant a panic
/// could break halfway: an entry is inserted whole).
fn lock() -> std::sync::MutexGuard<'static, Option<Cache>> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `Wᵀ` of an ungrouped convolution's weight `w` (`c_out` rows of `k`), row-major `k × c_out`
/// ([`Layout::Transposed`], the tensor `id`), from the second time it is asked for: `None`
/// the first time. It gives the gradient's gemm the same values as `W` read through strides,
/// only faster, so a command that runs the backward once (a gradient map) is spared building
/// and faulting in a copy of every weight (0.1–0.2 s for ResNet-50).
pub(crate) fn transposed<T: WithDType>(id: TensorId, w: &[T], c_out: usize, k: usize) -> Option<Arc<Vec<T>>> {
    let key = (id, Layout::Transposed);
    {
        let mut guard = lock();
        let cache = guard.get_or_insert_with(Cache::default);
        if !cache.entries.contains_key(&key) && cache.asked.insert(key) {
            return None;
        }
    }
    Some(transpose(id, w, c_out, k))
}

/// `Wᵀ`, built once.
fn transpose<T: WithDType>(id: TensorId, w: &[T], c_out: usize, k: usize) -> Arc<Vec<T>> {
    derived(id, Layout::Transposed, || {
        // 64 rows of Wᵀ at a time: each weight row's 64 values are read in one run, and the
        // 64 output rows written to column by column stay in the cache (read column by column
        // whole, a 4608 × 2048 weight misses on every element).
        const BLOCK: usize = 64;
        let mut t = vec![T::zero(); k * c_out];
        t.par_chunks_mut(BLOCK * c_out).enumerate().for_each(|(b, rows)| {
            let (r0, nr) = (b * BLOCK, rows.len() / c_out);
            for co in 0..c_out {
                for (j, &v) in w[co * k + r0..][..nr].iter().enumerate() {
                    rows[j * c_out + co] = v;
                }
            }
        });
        t
    })
}
