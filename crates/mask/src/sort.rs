//! The ascending order PyTorch's CPU `sort` gives, ties included.
//!
//! The area constraint's gradient goes to the mask values by their rank, so among tied values
//! it depends on which one the sort puts first. Masks are full of ties: all parameters start
//! at 1, and the clamp to [0, 1] makes whole regions exactly 0 or 1. When the `⌊n(1 − a)⌋`
//! boundary of the reference falls inside a block of ties, the sort's tie order decides which
//! pixels of the block are pushed down and which up.
//!
//! PyTorch's CPU `sort` (stable = False, what TorchRay calls) runs libstdc++'s `std::sort` on
//! (value, index) pairs, comparing values only: an introsort whose tie order is neither the
//! index order nor random. [`torch_order`] replays that algorithm step by step (median of
//! three, unguarded Hoare partition, heap sort past depth `2⌊log₂ n⌋`, insertion sort of the
//! 16-element runs), so the area constraint ranks ties as TorchRay does.

/// The permutation that sorts `values` ascending as PyTorch's CPU `torch.sort(stable=False)`
/// does: `values[order[0]] ≤ values[order[1]] ≤ …`, with ties in the same order as PyTorch's.
///
/// NaN sorts last, as in PyTorch.
pub fn torch_order(values: &[f64]) -> Vec<u32> {
    let mut v: Vec<(f64, u32)> = values.iter().enumerate().map(|(i, &x)| (x, i as u32)).collect();
    introsort(&mut v);
    v.into_iter().map(|(_, i)| i).collect()
}

/// PyTorch's `KeyValueCompAsc`: `a < b`, with NaN greater than everything.
#[inline(always)]
fn less(a: f64, b: f64) -> bool {
    (!a.is_nan() && b.is_nan()) || a < b
}

const THRESHOLD: usize = 16;

/// libstdc++'s `std::__sort`.
fn introsort(v: &mut [(f64, u32)]) {
    let n = v.len();
    if n < 2 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(v, 0, n, depth);
    final_insertion_sort(v, 0, n);
}

/// `std::__introsort_loop`: partition until runs are at most 16 long (left for the final
/// insertion sort), or heap sort a run once the depth limit is spent.
fn introsort_loop(v: &mut [(f64, u32)], first: usize, mut last: usize, mut depth: usize) {
    while last - first > THRESHOLD {
        if depth == 0 {
            heap_sort(&mut v[first..last]);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(v, first, last);
        introsort_loop(v, cut, last, depth);
        last = cut;
    }
}

/// `std::__unguarded_partition_pivot`: the median of `first + 1`, the middle and `last − 1`
/// moved to `first`, then a Hoare partition of `first + 1..last` around it.
fn partition_pivot(v: &mut [(f64, u32)], first: usize, last: usize) -> usize {
    let mid = first + (last - first) / 2;
    move_median_to_first(v, first, first + 1, mid, last - 1);
    let pivot = v[first].0;
    let (mut lo, mut hi) = (first + 1, last);
    loop {
        while less(v[lo].0, pivot) {
            lo += 1;
        }
        hi -= 1;
        while less(pivot, v[hi].0) {
            hi -= 1;
        }
        if lo >= hi {
            return lo;
        }
        v.swap(lo, hi);
        lo += 1;
    }
}

/// `std::__move_median_to_first`.
fn move_median_to_first(v: &mut [(f64, u32)], result: usize, a: usize, b: usize, c: usize) {
    let (va, vb, vc) = (v[a].0, v[b].0, v[c].0);
    let median = if less(va, vb) {
        if less(vb, vc) {
            b
        } else if less(va, vc) {
            c
        } else {
            a
        }
    } else if less(va, vc) {
        a
    } else if less(vb, vc) {
        c
    } else {
        b
    };
    v.swap(result, median);
}

/// `std::__final_insertion_sort`: a guarded insertion sort of the first 16, then an
/// unguarded one of the rest (the partitions guarantee a smaller element before each run).
fn final_insertion_sort(v: &mut [(f64, u32)], first: usize, last: usize) {
    if last - first > THRESHOLD {
        insertion_sort(v, first, first + THRESHOLD);
        for i in first + THRESHOLD..last {
            unguarded_linear_insert(v, i);
        }
    } else {
        insertion_sort(v, first, last);
    }
}

/// `std::__insertion_sort`.
fn insertion_sort(v: &mut [(f64, u32)], first: usize, last: usize) {
    for i in first + 1..last {
        if less(v[i].0, v[first].0) {
            v[first..=i].rotate_right(1);
        } else {
            unguarded_linear_insert(v, i);
        }
    }
}

/// `std::__unguarded_linear_insert`: moves `v[i]` left past the larger elements.
fn unguarded_linear_insert(v: &mut [(f64, u32)], mut i: usize) {
    let val = v[i];
    while less(val.0, v[i - 1].0) {
        v[i] = v[i - 1];
        i -= 1;
    }
    v[i] = val;
}

/// `std::__partial_sort(first, last, last)`: `__make_heap`, then `__pop_heap` down to one.
fn heap_sort(v: &mut [(f64, u32)]) {
    let len = v.len();
    if len < 2 {
        return;
    }
    let mut parent = (len - 2) / 2;
    loop {
        let value = v[parent];
        adjust_heap(v, parent, len, value);
        if parent == 0 {
            break;
        }
        parent -= 1;
    }
    let mut last = len;
    while last > 1 {
        last -= 1;
        // __pop_heap(first, last, last): the top goes to `last`, its old value sifts in.
        let value = v[last];
        v[last] = v[0];
        adjust_heap(v, 0, last, value);
    }
}

/// `std::__adjust_heap`: sifts the hole at `hole` down to a leaf, then pushes `value` up.
fn adjust_heap(v: &mut [(f64, u32)], mut hole: usize, len: usize, value: (f64, u32)) {
    let top = hole;
    let mut child = hole;
    while child < (len - 1) / 2 {
        child = 2 * (child + 1);
        if less(v[child].0, v[child - 1].0) {
            child -= 1;
        }
        v[hole] = v[child];
        hole = child;
    }
    if len.is_multiple_of(2) && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        v[hole] = v[child - 1];
        hole = child - 1;
    }
    // __push_heap
    let mut parent = hole.wrapping_sub(1) / 2;
    while hole > top && less(v[parent].0, value.0) {
        v[hole] = v[parent];
        hole = parent;
        parent = hole.wrapping_sub(1) / 2;
    }
    v[hole] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(values: &[f64]) -> bool {
        let o = torch_order(values);
        let mut seen = vec![false; values.len()];
        o.iter().for_each(|&i| seen[i as usize] = true);
        seen.iter().all(|&s| s)
            && o.windows(2)
                .all(|w| !less(values[w[1] as usize], values[w[0] as usize]))
    }

    #[test]
    fn sorts_every_shape_of_input() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        for n in [0, 1, 2, 3, 16, 17, 100, 1000, 5000] {
            let random: Vec<f64> = (0..n).map(|_| next()).collect();
            let ties: Vec<f64> = (0..n).map(|_| (next() * 4.0).floor()).collect();
            let up: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let down: Vec<f64> = (0..n).map(|i| -(i as f64)).collect();
            let same = vec![1.0; n];
            let nan: Vec<f64> = (0..n).map(|i| if i % 7 == 0 { f64::NAN } else { next() }).collect();
            for v in [random, ties, up, down, same, nan] {
                assert!(sorted(&v), "n = {n}");
            }
        }
    }

    #[test]
    fn heap_sort_sorts() {
        for n in [2usize, 3, 4, 5, 31, 32, 33, 200] {
            let mut v: Vec<(f64, u32)> = (0..n).map(|i| (((i * 7919) % 13) as f64, i as u32)).collect();
            heap_sort(&mut v);
            assert!(v.windows(2).all(|w| w[0].0 <= w[1].0), "n = {n}");
        }
    }
}
