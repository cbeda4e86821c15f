//! Threads: candle's element-wise pool beside this crate's kernels.

/// Makes candle run its element-wise CPU operations on the calling thread: sets
/// `CANDLE_NUM_THREADS=1` unless it is set already.
///
/// candle runs element-wise operations on large tensors (additions and products, and with them
/// the gradient sums of every backward pass) on a pool of its own, one thread per core, whose
/// threads spin while they wait for work. This crate's kernels and the gemms have their own
/// threads, and the spinning ones take cores from them: on a 2-core machine `extremal bench`
/// forward + backward to the input took 0.089 s instead of 0.116 s for ResNet-50 and 0.027 s
/// instead of 0.035 s for EfficientNet-Lite0 with the element-wise operations on the calling
/// thread. The command-line tool calls this first thing; a program using the libraries can
/// do the same, or set `CANDLE_NUM_THREADS` itself. It takes effect only if called before
/// candle's first element-wise operation on a large tensor.
///
/// # Safety
/// As [`std::env::set_var`]: no other thread may read or write the environment meanwhile;
/// call it at the start of `main`.
pub unsafe fn one_elementwise_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
