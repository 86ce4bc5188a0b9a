// How this process's heap keeps and returns freed memory.
//
// A training step allocates and frees the same large tensors (activations,
// their gradients, logits chunks) every step. With glibc's defaults each of
// them above the dynamic mmap threshold, and every free at the top of the
// heap above the trim threshold, goes back to the kernel, so the next step
// page-faults the same memory in again: on llama-512x8 a third of a LoRA
// step was system time (bench/README.md, "The heap"). KeepFreedMemory makes
// the heap keep what it has; ReturnFreedMemory gives it back when a process
// goes idle (a worker between rounds).
#ifndef FEDPEFT_COMMON_HEAP_H_
#define FEDPEFT_COMMON_HEAP_H_

namespace fedpeft {

// Trims the heap (what loading a model freed goes back), then sets glibc's
// mmap threshold to 1 GiB and turns automatic trimming off, so blocks freed
// from then on below 1 GiB are reused instead of unmapped and faulted in
// again. For a process with one trainer, or a few (`fedpeft train`,
// `worker`, `executor`), after the model is loaded: loading with the
// defaults keeps each large tensor in its own mapping, so its transients
// leave no holes. Not for many training threads: each of glibc's arenas
// would keep a step's peak (thread-mode simulation with 100 workers on a
// Qwen2.5-0.5B base: 61 arena heaps, 3.9 GB, as they registered). The
// resident size stays at the peak until ReturnFreedMemory. Does nothing when
// the environment sets the allocator (GLIBC_TUNABLES naming glibc.malloc,
// MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_), when FEDPEFT_HEAP=default,
// or on a C library other than glibc. Returns whether it changed anything.
bool KeepFreedMemory();

// At most `arenas` malloc arenas (glibc makes up to 8 per core, one per
// thread that contends). Each arena keeps its own free memory, so a process
// whose many threads take turns at large steps holds up to one step's peak
// per arena: for thread-mode simulation, with `arenas` its compute slots.
// Call before the threads start. Does nothing when the environment sets
// MALLOC_ARENA_MAX, a glibc.malloc tunable or FEDPEFT_HEAP=default. Returns
// whether it took effect.
bool LimitArenas(int arenas);

// Returns the heap's free memory to the kernel (malloc_trim) if
// KeepFreedMemory took effect in this process; otherwise glibc trims by
// itself and this does nothing (so threads sharing a default heap never trim
// under each other's steps). For a process about to idle with its peak
// still resident.
void ReturnFreedMemory();

}  // namespace fedpeft

#endif  // FEDPEFT_COMMON_HEAP_H_
