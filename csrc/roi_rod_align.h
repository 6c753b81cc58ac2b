// Sampling geometry of the fused RoI + RoD align, shared by the CPU and the CUDA kernels.
//
// The semantics are fedpic's reference (pic_core/ops.py, DESIGN.md "Known pitfalls"), for
// A = output_size and P = A + 1 sample points per axis:
//   RoI: t_k = x1*s + (k * max(x2*s - x1*s + 1, 0)) / A, k = 0..A (same for y).
//   RoD: a fixed grid over the whole map, t_k = (k * (size - 1.001)) / A; a grid sample whose
//        x lies in [x1*s, x2*s] and whose y lies in [y1*s, y2*s] is set to zero.
//   Bilinear sampling from start = min(floor(t), size - 2) with weight t - start (the last
//   row extrapolates), zero when t < 0 or t >= size. Then a 2x2 average pool, stride 1.
// Every quantity is computed in the feature dtype and in the same operation order as the
// pure-PyTorch reference, so samples on the map border fall on the same side of it.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace fedpic {

// One bilinear tap pair along an axis: value = w0 * x[index] + w1 * x[index + 1].
// index < 0 marks a sample outside the map, which contributes zero.
template <typename T>
struct AxisTap {
  int index;
  T w0;
  T w1;
};

template <typename T>
C10_HOST_DEVICE inline T floor_value(T t) {
#ifdef __CUDA_ARCH__
  return floor(t);
#else
  return std::floor(t);
#endif
}

template <typename T>
C10_HOST_DEVICE inline AxisTap<T> axis_tap(T t, int size) {
  AxisTap<T> tap{-1, T(0), T(0)};
  if (!(t >= T(0) && t < T(size))) {  // also rejects NaN
    return tap;
  }
  T start = floor_value(t);
  if (start > T(size - 2)) {
    start = T(size - 2);
  }
  const T ratio = t - start;
  tap.index = static_cast<int>(start);
  tap.w0 = T(1) - ratio;
  tap.w1 = ratio;
  return tap;
}

// k-th RoI sample coordinate between two box edges already in map units.
template <typename T>
C10_HOST_DEVICE inline T roi_coord(T start, T end, int k, int output_size) {
  T extent = end - start + T(1);
  if (extent < T(0)) {
    extent = T(0);  // malformed box: every sample sits on its start edge
  }
  return start + (T(k) * extent) / T(output_size);
}

// k-th RoD grid coordinate along an axis of `size` map cells.
template <typename T>
C10_HOST_DEVICE inline T rod_coord(int size, int k, int output_size) {
  return (T(k) * static_cast<T>(static_cast<double>(size) - 1.001)) / T(output_size);
}

// Whether a RoD grid coordinate lies inside a box edge pair (closed interval).
template <typename T>
C10_HOST_DEVICE inline bool inside(T coord, T start, T end) {
  return coord >= start && coord <= end;
}

}  // namespace fedpic
