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

// Sets glibc's mmap threshold to 1 GiB and turns automatic trimming off, so
// freed blocks below 1 GiB are reused instead of unmapped and faulted in
// again. The peak resident size does not grow (the same blocks are reused);
// the resident size stays at the peak until ReturnFreedMemory. Does nothing
// when the environment already sets the allocator (GLIBC_TUNABLES naming
// glibc.malloc, MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_), when
// FEDPEFT_HEAP=default, or on a C library other than glibc. Returns whether
// it changed anything. Call once, early in main, before threads start.
bool KeepFreedMemory();

// Returns the heap's free memory to the kernel (malloc_trim). For a
// process about to idle with its peak still resident.
void ReturnFreedMemory();

}  // namespace fedpeft

#endif  // FEDPEFT_COMMON_HEAP_H_
