// Device code of the CUDA RoI + RoD align (see roi_rod_align_cuda.cu for the design): the
// forward kernel, the two backward kernels and their helpers. Kept apart from the launch and
// registration code so the kernels can also be compiled as plain C++ (with CUDA's built-ins
// defined on the host) to check their indexing where no GPU is available.
#pragma once

#include <cstdint>

#include "roi_rod_align.h"

// Every thread of the grid walks index = its global id, + grid size, ... < total.
#define FEDPIC_GRID_STRIDE_LOOP(index, total)                                             \
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; \
       index < (total); index += static_cast<int64_t>(blockDim.x) * gridDim.x)

namespace fedpic {
namespace cuda_kernels {

// A box in map units.
template <typename T>
struct MapBox {
  int64_t image;
  T x1, y1, x2, y2;
};

template <typename T>
__device__ inline MapBox<T> load_box(const T* boxes, int64_t k, T scale) {
  const T* box = boxes + 5 * k;
  return MapBox<T>{static_cast<int64_t>(box[0]), box[1] * scale, box[2] * scale, box[3] * scale, box[4] * scale};
}

template <typename T>
__device__ inline T gather_sample(const T* plane, int width, const AxisTap<T>& ty, const AxisTap<T>& tx) {
  if (ty.index < 0 || tx.index < 0) {
    return T(0);
  }
  const T* top = plane + static_cast<int64_t>(ty.index) * width + tx.index;
  const T* bottom = top + width;
  return ty.w0 * (tx.w0 * __ldg(top) + tx.w1 * __ldg(top + 1)) +
         ty.w1 * (tx.w0 * __ldg(bottom) + tx.w1 * __ldg(bottom + 1));
}

template <typename T>
__device__ inline void scatter_sample(T* plane, int width, const AxisTap<T>& ty, const AxisTap<T>& tx, T value) {
  if (ty.index < 0 || tx.index < 0 || value == T(0)) {
    return;
  }
  T* top = plane + static_cast<int64_t>(ty.index) * width + tx.index;
  T* bottom = top + width;
  atomicAdd(top, ty.w0 * tx.w0 * value);
  atomicAdd(top + 1, ty.w0 * tx.w1 * value);
  atomicAdd(bottom, ty.w1 * tx.w0 * value);
  atomicAdd(bottom + 1, ty.w1 * tx.w1 * value);
}

// Position of a flat index in a (K, C, side, side) layout.
struct BoxCell {
  int64_t box;
  int channel, row, col;
};

__device__ inline BoxCell split_index(int64_t index, int side, int channels) {
  const int64_t square = static_cast<int64_t>(side) * side;
  return BoxCell{index / (square * channels), static_cast<int>((index / square) % channels),
                 static_cast<int>((index / side) % side), static_cast<int>(index % side)};
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ features, const T* __restrict__ boxes, T* __restrict__ out,
                               int64_t total, int64_t batch, int channels, int height, int width, int output, T scale) {
  FEDPIC_GRID_STRIDE_LOOP(index, total) {
    const BoxCell at = split_index(index, output, channels);
    const int64_t k = at.box;
    const int c = at.channel, i = at.row, j = at.col;
    const MapBox<T> box = load_box(boxes, k, scale);
    const int64_t cell = static_cast<int64_t>(i) * output + j;
    const int64_t plane_out = static_cast<int64_t>(output) * output;
    T roi = T(0), rod = T(0);
    if (box.image < 0 || box.image >= batch) {  // rejected by the host check; never read out of bounds
      out[(k * 2 * channels + c) * plane_out + cell] = roi;
      out[(k * 2 * channels + channels + c) * plane_out + cell] = rod;
      continue;
    }
    const T* plane = features + (box.image * channels + c) * static_cast<int64_t>(height) * width;
    for (int dp = 0; dp < 2; ++dp) {
      const AxisTap<T> ty = axis_tap(roi_coord(box.y1, box.y2, i + dp, output), height);
      const T grid_y = rod_coord<T>(height, i + dp, output);
      const AxisTap<T> gy = axis_tap(grid_y, height);
      const bool in_y = inside(grid_y, box.y1, box.y2);
      for (int dq = 0; dq < 2; ++dq) {
        const AxisTap<T> tx = axis_tap(roi_coord(box.x1, box.x2, j + dq, output), width);
        roi += gather_sample(plane, width, ty, tx);
        const T grid_x = rod_coord<T>(width, j + dq, output);
        if (!(in_y && inside(grid_x, box.x1, box.x2))) {
          rod += gather_sample(plane, width, gy, axis_tap(grid_x, width));
        }
      }
    }
    out[(k * 2 * channels + c) * plane_out + cell] = T(0.25) * roi;
    out[(k * 2 * channels + channels + c) * plane_out + cell] = T(0.25) * rod;
  }
}

// Sum of the gradient cells (i, j) whose 2x2 pooling window covers sample point (p, q), / 4.
template <typename T>
__device__ inline T unpool(const T* plane, int output, int p, int q) {
  T sum = T(0);
  for (int i = (p > 0 ? p - 1 : 0); i <= (p < output ? p : output - 1); ++i) {
    for (int j = (q > 0 ? q - 1 : 0); j <= (q < output ? q : output - 1); ++j) {
      sum += plane[i * output + j];
    }
  }
  return T(0.25) * sum;
}

template <typename T>
__global__ void backward_samples_kernel(const T* __restrict__ grad, const T* __restrict__ boxes,
                                        T* __restrict__ grad_features, T* __restrict__ grid_grad, int64_t total,
                                        int64_t batch, int channels, int height, int width, int output, T scale) {
  const int points = output + 1;
  const int64_t plane_out = static_cast<int64_t>(output) * output;
  FEDPIC_GRID_STRIDE_LOOP(index, total) {
    const BoxCell at = split_index(index, points, channels);
    const int64_t k = at.box;
    const int c = at.channel, p = at.row, q = at.col;
    const MapBox<T> box = load_box(boxes, k, scale);
    if (box.image < 0 || box.image >= batch) {  // the backward trusts its forward's check; stay in bounds
      continue;
    }
    const T* roi_grad = grad + (k * 2 * channels + c) * plane_out;
    const T* rod_grad = roi_grad + channels * plane_out;
    const int64_t plane_index = box.image * channels + c;
    scatter_sample(grad_features + plane_index * height * width, width,
                   axis_tap(roi_coord(box.y1, box.y2, p, output), height),
                   axis_tap(roi_coord(box.x1, box.x2, q, output), width), unpool(roi_grad, output, p, q));
    const bool masked = inside(rod_coord<T>(height, p, output), box.y1, box.y2) &&
                        inside(rod_coord<T>(width, q, output), box.x1, box.x2);
    if (!masked) {
      const T value = unpool(rod_grad, output, p, q);
      if (value != T(0)) {
        atomicAdd(grid_grad + (plane_index * points + p) * points + q, value);
      }
    }
  }
}

template <typename T>
__global__ void backward_grid_kernel(const T* __restrict__ grid_grad, T* __restrict__ grad_features, int64_t total,
                                     int height, int width, int output) {
  const int points = output + 1;
  FEDPIC_GRID_STRIDE_LOOP(index, total) {
    const int q = static_cast<int>(index % points);
    const int p = static_cast<int>((index / points) % points);
    const int64_t plane_index = index / (static_cast<int64_t>(points) * points);
    scatter_sample(grad_features + plane_index * height * width, width,
                   axis_tap(rod_coord<T>(height, p, output), height), axis_tap(rod_coord<T>(width, q, output), width),
                   grid_grad[index]);
  }
}

// One block checks every box: flags = 1 (a non-finite value) | 2 (a batch index that is not an
// integer in [0, batch)). One block keeps it to a single launch and a single 4-byte readback.
template <typename T>
__global__ void check_boxes_kernel(const T* __restrict__ boxes, int64_t num_boxes, int64_t batch, int* flags) {
  int non_finite = 0, bad_index = 0;
  for (int64_t k = threadIdx.x; k < num_boxes; k += blockDim.x) {
    const T* box = boxes + 5 * k;
    for (int v = 0; v < 5; ++v) {
      non_finite |= isfinite(box[v]) ? 0 : 1;
    }
    const T index = box[0];
    bad_index |= (index == floor_value(index) && index >= T(0) && index < T(batch)) ? 0 : 1;
  }
  non_finite = __syncthreads_or(non_finite);
  bad_index = __syncthreads_or(bad_index);
  if (threadIdx.x == 0) {
    *flags = non_finite | (bad_index << 1);
  }
}

}  // namespace cuda_kernels
}  // namespace fedpic
