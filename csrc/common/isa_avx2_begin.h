// Opens the AVX2+FMA region of an *_avx2.cpp file. Include it after every other
// header, and close the region with isa_avx2_end.h at the end of the file.
//
// Why not -mavx2 on the whole file: then every inline function the file
// instantiates from a shared header (std::vector, std::min, our own templates)
// is emitted with AVX2 encodings, and the linker may keep that copy for the
// baseline code too -- an illegal instruction on a CPU without AVX2. With a
// target region, only the functions defined here get AVX2; header code stays
// baseline and is merely inlined into them.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#else
#error "AVX2 kernels need GCC or Clang (target attributes)"
#endif
