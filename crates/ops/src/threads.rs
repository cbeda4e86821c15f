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

/// Runs `work` while the other threads of the current rayon pool wait for its parallel
/// sections by polling instead of sleeping, and returns its result. Call it from a thread of
/// the pool ([`on_thread_pool`]).
///
/// rayon puts a thread that finds no work to sleep, and each parallel section must then wake
/// it: a system call, under a hypervisor an interrupt between cores. A forward and backward
/// pass at batch 1 is hundreds of short sections, and perf put 15 % of the soft phase of a
/// channel search (EfficientNet-Lite0 `layer3`) in the scheduler's wake-up and switch paths.
/// Here the other threads poll ([`rayon::yield_now`], with [`std::thread::yield_now`] between
/// polls so that other processes' threads still get the core), and nap between polls after
/// [`IDLE_BEFORE_NAPS`] without work. The command-line tool runs every command this way, with
/// mimalloc as its allocator: on a 2-core Intel Xeon under KVM the soft phase of a channel
/// search took 0.74 s instead of 1.05 s, and `extremal bench` forward + backward to the input
/// at batch 1 about 0.11 instead of 0.12 s (ResNet-50) and 0.03 instead of 0.038 s (Lite0), with
/// the same results (`docs/reference.md`, "Waiting threads poll"). With glibc's malloc, an
/// arena per thread made ResNet-50's batch-3 pass take 0.29–0.42 s from one process to the
/// next (0.32–0.35 s sleeping), and one arena took the channel search's gain away: choose the
/// allocator with it. It is not the default of [`on_thread_pool`], which leaves that choice to
/// the program.
///
/// If `work` panics, the polling threads stop and the panic continues.
pub fn polling<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let others = rayon::current_num_threads().saturating_sub(1);
    if others == 0 {
        return work();
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 0..others {
            s.spawn(|_| wait_by_polling(&stop));
        }
        // Set on the way out, a panic included: the scope waits for the polling threads.
        let _stop = StopOnDrop(&stop);
        work()
    })
}

/// How long a thread of [`polling`] polls without finding work before it naps between polls.
pub const IDLE_BEFORE_NAPS: std::time::Duration = std::time::Duration::from_millis(20);

/// A polling thread's nap once it has been idle for [`IDLE_BEFORE_NAPS`].
const NAP: std::time::Duration = std::time::Duration::from_micros(200);

/// Runs the pool's jobs as they come (rayon's work stealing) until `stop` is set.
fn wait_by_polling(stop: &std::sync::atomic::AtomicBool) {
    let mut last_work = std::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            last_work = std::time::Instant::now();
        } else if last_work.elapsed() < IDLE_BEFORE_NAPS {
            std::thread::yield_now();
        } else {
            std::thread::sleep(NAP);
        }
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// The calling thread's choices for this crate's forward kernels ([`crate::set_conv_algorithm`],
/// [`crate::set_depthwise_layout`]), to be made again on another thread.
#[derive(Debug, Clone, Copy)]
struct ForwardSettings {
    algorithm: crate::ConvAlgorithm,
    layout: crate::DepthwiseLayout,
}

impl ForwardSettings {
    fn current() -> Self {
        Self {
            algorithm: crate::conv_algorithm(),
            layout: crate::depthwise_layout(),
        }
    }

    /// Runs `work` on this thread under these settings, then restores the thread's own.
    fn run<T>(self, work: impl FnOnce() -> T) -> T {
        let algorithm = crate::set_conv_algorithm(self.algorithm);
        let layout = crate::set_depthwise_layout(self.layout);
        let out = work();
        crate::set_conv_algorithm(algorithm);
        crate::set_depthwise_layout(layout);
        out
    }
}

/// Runs `a` and `b` as [`rayon::join`] does, possibly at the same time on two threads, each
/// under the calling thread's convolution algorithm and depthwise layout, and returns both
/// results.
///
/// For forward passes over independent parts of a batch: candle's element-wise operations run
/// on the calling thread ([`one_elementwise_thread`]), so one batch's element-wise work
/// leaves the other core idle, and two halves run side by side fill it (a channel search at
/// EfficientNet-Lite0 `layer3` scores its sets this way). The gradient rule and excitation
/// backprop stay with the calling thread: backward passes must not be split this way.
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let settings = ForwardSettings::current();
    rayon::join(move || settings.run(a), move || settings.run(b))
}

/// Runs `work(i)` for each `i` in `0..jobs` side by side on the pool's threads, and returns the
/// results in index order. Each thread takes the next job (in index order) when it finishes one,
/// so put the longest jobs first. Every job runs under the calling thread's convolution
/// algorithm, depthwise layout and gradient rule, so a job may run forward and backward
/// passes; under a gradient rule limited to a count of activations
/// ([`crate::set_gradient_rule_for`]), which cannot be shared between threads, the jobs run
/// one after the other on the calling thread instead.
///
/// For independent pieces of work that each leave cores idle part of the time (a sweep's
/// channel searches, one per keep, interleave batch-1 backward passes with batches of sets).
pub fn side_by_side<T: Send>(jobs: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let (rule, count) = crate::act::gradient_rule_state();
    let workers = rayon::current_num_threads().min(jobs);
    if workers < 2 || count.is_some() {
        return (0..jobs).map(work).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let settings = ForwardSettings::current();
    let worker = || {
        let _rule = crate::set_gradient_rule(rule);
        settings.run(|| {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= jobs {
                    return done;
                }
                done.push((i, work(i)));
            }
        })
    };
    let mut done = workers_side_by_side(workers, &worker);
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, t)| t).collect()
}

/// `workers` runs of `worker`, side by side ([`rayon::join`]), their outputs together.
fn workers_side_by_side<T: Send>(workers: usize, worker: &(impl Fn() -> Vec<T> + Sync)) -> Vec<T> {
    if workers < 2 {
        return worker();
    }
    let (mut a, b) = rayon::join(
        || workers_side_by_side(workers / 2, worker),
        || workers_side_by_side(workers - workers / 2, worker),
    );
    a.extend(b);
    a
}
