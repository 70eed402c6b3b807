// Run-time CPU feature detection: picks which translation units' kernels run.
#pragma once

namespace fastconv {

// Ordered: a CPU with a later ISA also runs every earlier one's kernels.
enum class Isa { kBaseline = 0, kAvx2Fma = 1, kAvx512 = 2 };

// The ISA path the dispatch tables use. Read once, from CPUID, at first call;
// FASTCONV_ISA=baseline or FASTCONV_ISA=avx2 in the environment caps it (tests
// run every tier a CPU has this way).
Isa active_isa();
const char* isa_name(Isa isa);

}  // namespace fastconv
