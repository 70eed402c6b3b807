// Opens the AVX-512 region of an *_avx512.cpp file (see isa_avx2_begin.h for
// why a target region rather than compiler flags). Include it after every other
// header, and close the region with isa_avx512_end.h at the end of the file.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#else
#error "AVX-512 kernels need GCC or Clang (target attributes)"
#endif
