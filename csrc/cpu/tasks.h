// run_tasks(n, fn): fn(0) ... fn(n-1) concurrently on up to at::get_num_threads() threads,
// each task on one thread with MKL single-threaded inside it. Used for the directions and
// unit slices of a layer (step_team.h), and for splitting large GEMMs in row blocks.
//
// Which threads. torch's CPU build runs its parallel regions on a libgomp (OpenMP) team.
// After a region ends, libgomp's idle workers keep spinning on their cores for a while
// (milliseconds), waiting for the next one. A thread of our own on such a core shares it
// with the spinning worker, and the second direction took twice as long as the first
// (benchmarks/NOTES.md, CPU version 7). So the tasks run on that same OpenMP team: we call libgomp's entry point for `#pragma omp parallel`
// (GOMP_parallel) ourselves, bound weakly to the libgomp that libtorch_cpu loaded. This
// file is not compiled with -fopenmp, which would link a second OpenMP runtime into the
// process. Without libgomp (another OpenMP runtime, or none) the tasks beyond the first go
// to torch's inter-op pool instead.
//
// Tasks are claimed from a shared counter by whichever thread comes first, so a team that
// is smaller than asked (nested inside another parallel region, one thread) still runs
// every task, and so does a busy inter-op pool.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>

#include "blas.h"

extern "C" {
void GOMP_parallel(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags)
    __attribute__((weak));
}

namespace birnn::cpu {

template <typename Fn>
class TaskQueue {
 public:
  TaskQueue(int n, const Fn& fn) : n_(n), fn_(fn) {}

  // Runs tasks until none is left unclaimed.
  void drain() {
    for (int i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1)) {
      try {
        const SingleThreadedBlas guard;
        fn_(i);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      const std::lock_guard<std::mutex> lock(mutex_);
      if (++finished_ == n_) all_finished_.notify_all();
    }
  }

  // Waits for the tasks other threads claimed, then rethrows the first error.
  void finish() {
    std::unique_lock<std::mutex> lock(mutex_);
    all_finished_.wait(lock, [&] { return finished_ == n_; });
    if (error_) std::rethrow_exception(error_);
  }

  static void drain_on_team(void* queue) { static_cast<TaskQueue*>(queue)->drain(); }

 private:
  const int n_;
  const Fn& fn_;  // called only for a claimed task, i.e. before finish() returns
  std::atomic<int> next_{0};
  std::mutex mutex_;
  std::condition_variable all_finished_;
  int finished_ = 0;
  std::exception_ptr error_;
};

template <typename Fn>
void run_tasks(int n, const Fn& fn) {
  const int threads = std::min<int>(n, at::get_num_threads());
  if (threads <= 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  // Shared with the helpers: the pool may start one after every task is done and we have
  // returned; it then finds nothing to claim and touches only the queue it keeps alive.
  const auto queue = std::make_shared<TaskQueue<Fn>>(n, fn);
  if (GOMP_parallel != nullptr) {
    GOMP_parallel(&TaskQueue<Fn>::drain_on_team, queue.get(), static_cast<unsigned>(threads),
                  0);
  } else {
    for (int h = 1; h < threads; ++h) at::launch([queue] { queue->drain(); });
    queue->drain();
  }
  queue->finish();
}

}  // namespace birnn::cpu
