// Large CPU buffers on huge pages.
//
// A training step allocates buffers of tens to hundreds of MiB (reserve, dgates, packed
// activations) that torch's allocator takes fresh from the OS and returns after the call, so
// every call pays one page fault per 4 KiB page on first touch (benchmarks/NOTES.md, CPU
// version 14). Where transparent huge pages are enabled only on request (the usual
// "madvise" setting), asking for them before the first touch makes that one fault per 2 MiB.
#pragma once

#include <ATen/core/Tensor.h>

namespace birnn::cpu {

// Asks the OS to back `t`'s memory with huge pages when t is a CPU tensor of at least 4 MiB
// (the whole 2 MiB pages inside it). A hint only: no effect where huge pages are off or the
// memory was already touched, and never an error.
void advise_huge_pages(const at::Tensor& t);

// Rewrites one byte of every page of `t` (a CPU tensor of at least 4 MiB) with its own value,
// the pages split over the threads, so that the first-touch faults happen here, all threads at
// once, and not inside a time loop whose threads meet at a barrier every step (there a thread
// stalled in a fault stalls the others too). The contents are unchanged.
void prefault(const at::Tensor& t);

}  // namespace birnn::cpu
