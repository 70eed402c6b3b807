// Run-time CPU feature detection: picks which translation units' kernels run.
#pragma once

namespace fastconv {

// Ordered: a CPU with a later ISA also runs every earlier one's kernels.
enum class Isa { kBaseline = 0, kAvx2Fma = 1, kAvx512 = 2 };

// The best tier this CPU runs, read once from CPUID; FASTCONV_ISA=baseline or
// FASTCONV_ISA=avx2 in the environment caps it.
Isa detected_isa();
// The tier the kernel table serves: detected_isa(), or a lower tier chosen by
// set_active_isa (tests run every tier a CPU has in one process this way).
Isa active_isa();
// Requires isa <= detected_isa(), and that no kernel is running (the bindings
// hold a lock for that).
void set_active_isa(Isa isa);
const char* isa_name(Isa isa);

}  // namespace fastconv
