// Aligned scratch memory for packing panels and row buffers.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace fastconv {

template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t count) { resize(count); }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  // Grows (never shrinks); contents are not preserved.
  void resize(size_t count) {
    if (count <= capacity_) return;
    std::free(data_);
    const size_t bytes = ((count * sizeof(T) + 63) / 64) * 64;
    data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (data_ == nullptr) throw std::bad_alloc();
    capacity_ = count;
  }
  T* data() { return data_; }
  size_t capacity() const { return capacity_; }

 private:
  T* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace fastconv
