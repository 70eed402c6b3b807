// Run-time CPU feature detection: picks which translation units' kernels run.
#pragma once

namespace fastconv {

enum class Isa { kBaseline = 0, kAvx2Fma = 1 };

// The ISA path the dispatch tables use. Read once, from CPUID, at first call;
// FASTCONV_ISA=baseline in the environment forces the portable path (for tests).
Isa active_isa();
const char* isa_name(Isa isa);

}  // namespace fastconv
