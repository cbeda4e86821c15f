//! Threads: candle's element-wise pool beside this crate's kernels, and where the work runs.

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

/// Runs `work` on a thread of a rayon pool (one thread per core) instead of the calling one,
/// and returns its result.
///
/// Every kernel here, and gemm, splits its work with rayon. Called from outside the pool, each
/// parallel section hands all of its work to the pool's threads, puts the caller to sleep and
/// wakes it when they finish; from a pool thread, the caller takes its share of the work and
/// nothing sleeps. On a 2-core machine `extremal bench --model resnet50 --batch 3` took
/// 0.096 s forward and 0.219 s forward + backward to the input run this way, against 0.120 s
/// and 0.247 s from the main thread (medians of five alternating runs). The command-line tool
/// runs every command this way; a program using the libraries can do the same. If the pool
/// cannot be built, `work` runs on the calling thread.
pub fn on_thread_pool<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().build() {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}
