#include "common/cpu_features.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace fastconv {

namespace {
Isa detect_isa() {
  const char* forced = std::getenv("FASTCONV_ISA");
  if (forced != nullptr && std::strcmp(forced, "baseline") == 0) return Isa::kBaseline;
  Isa best = Isa::kBaseline;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc also checks that the OS saves the ymm/zmm state (XCR0).
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2Fma;
  if (best == Isa::kAvx2Fma && __builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
#endif
  if (forced != nullptr && std::strcmp(forced, "avx2") == 0) return std::min(best, Isa::kAvx2Fma);
  return best;
}

std::atomic<Isa>& active_tier() {
  static std::atomic<Isa> tier{detected_isa()};
  return tier;
}
}  // namespace

Isa detected_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

Isa active_isa() { return active_tier().load(std::memory_order_relaxed); }

void set_active_isa(Isa isa) {
  active_tier().store(std::min(isa, detected_isa()), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512f";
    case Isa::kAvx2Fma:
      return "avx2+fma";
    case Isa::kBaseline:
      break;
  }
  return "baseline";
}

}  // namespace fastconv
