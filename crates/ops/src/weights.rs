//! Layouts derived from a convolution's constant weights, computed once per weight tensor and
//! kept: Winograd's transformed filters, and the transposed weights of the input gradient's
//! gemm (a row-major `Wᵀ` runs that gemm 1.06–1.34× faster than `W` read through strides, at
//! ResNet-50's 1 × 1 shapes).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{TensorId, WithDType};
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
}

/// The derived layouts of each weight tensor seen (by id: candle's ids are never reused, and a
/// constant tensor's values never change).
struct Cache {
    entries: HashMap<(TensorId, Layout), Arc<dyn Any + Send + Sync>>,
    bytes: usize,
}

/// Past this many bytes the cache starts over (weights built per call, as excitation
/// backprop's clamped ones are, would otherwise pile up).
const CACHE_BYTES: usize = 1 << 30;

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// The `layout` of the weight tensor `id`, built by `build` the first time.
pub(crate) fn derived<T: WithDType>(id: TensorId, layout: Layout, build: impl FnOnce() -> Vec<T>) -> Arc<Vec<T>> {
    let key = (id, layout);
    if let Some(hit) = lock().as_ref().and_then(|c| c.entries.get(&key).cloned()) {
        if let Ok(v) = hit.downcast::<Vec<T>>() {
            return v;
        }
    }
    let v = Arc::new(build());
    let bytes = v.len() * std::mem::size_of::<T>();
    let mut guard = lock();
    let cache = guard.get_or_insert_with(|| Cache {
        entries: HashMap::new(),
        bytes: 0,
    });
    if cache.bytes + bytes > CACHE_BYTES {
        cache.entries.clear();
        cache.bytes = 0;
    }
    cache.entries.insert(key, v.clone());
    cache.bytes += bytes;
    v
}

/// The cache, recovered if a thread panicked while holding it (it holds no invariant a panic
/// could break halfway: an entry is inserted whole).
fn lock() -> std::sync::MutexGuard<'static, Option<Cache>> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `Wᵀ` of an ungrouped convolution's weight `w` (`c_out` rows of `k`), row-major `k × c_out`
/// ([`Layout::Transposed`], the tensor `id`).
pub(crate) fn transposed<T: WithDType>(id: TensorId, w: &[T], c_out: usize, k: usize) -> Arc<Vec<T>> {
    derived(id, Layout::Transposed, || {
        let mut t = vec![T::zero(); k * c_out];
        t.par_chunks_mut(c_out).enumerate().for_each(|(r, row)| {
            for (co, v) in row.iter_mut().enumerate() {
                *v = w[co * k + r];
            }
        });
        t
    })
}
