// Thread-count control shared by every kernel. The count is a process-wide
// setting passed explicitly to each parallel region (omp_set_num_threads is
// per calling thread, and kernels run on whichever Python thread calls them).
#pragma once

#include <cstdint>

namespace fastconv {

int get_num_threads();
void set_num_threads(int n);

// Threads worth using for `work` units when each unit is at least `grain`.
int threads_for(int64_t work, int64_t grain);

}  // namespace fastconv
