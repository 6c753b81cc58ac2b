// Host emulation of fedpic's CUDA kernels (csrc/roi_rod_align_cuda_kernels.h) for machines
// without a GPU: CUDA's built-ins are defined as serial C++ and every (block, thread) of a
// launch runs in turn. This checks the kernels' indexing and arithmetic against the reference;
// it cannot show races (the real kernels use atomics for every shared write). Developer tool,
// built on demand by check_cuda_kernels_on_cpu.py; not part of the package.
#include <torch/extension.h>

#include <cmath>
#include <cstdint>

namespace {
struct EmulatedDim {
  unsigned x;
};
EmulatedDim blockIdx, threadIdx, blockDim, gridDim;
}  // namespace

#define __global__
#define __device__
template <class T>
T __ldg(const T* p) { return *p; }
template <class T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p += v;
  return old;
}
template <class T>
bool isfinite(T v) { return std::isfinite(v); }
int __syncthreads_or(int v) { return v; }  // exact only for single-thread launches

#include "roi_rod_align_cuda_kernels.h"

using namespace fedpic::cuda_kernels;

namespace {

template <class F>
void launch(unsigned blocks, unsigned threads, F body) {
  gridDim.x = blocks;
  blockDim.x = threads;
  for (unsigned b = 0; b < blocks; ++b) {
    for (unsigned t = 0; t < threads; ++t) {
      blockIdx.x = b;
      threadIdx.x = t;
      body();
    }
  }
}

// Small odd grids so the kernels' grid-stride loops wrap several times.
torch::Tensor forward(torch::Tensor features, torch::Tensor boxes, double scale, int64_t output) {
  features = features.contiguous();
  boxes = boxes.to(features.scalar_type()).contiguous();
  const int64_t num_boxes = boxes.size(0), channels = features.size(1);
  auto out = torch::full({num_boxes, 2 * channels, output, output}, 12345.0, features.options());
  const int64_t total = num_boxes * channels * output * output;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "emulated_forward", [&] {
    launch(5, 32, [&] {
      forward_kernel<scalar_t>(features.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                               total, features.size(0), channels, features.size(2), features.size(3), output,
                               static_cast<scalar_t>(scale));
    });
  });
  return out;
}

torch::Tensor backward(torch::Tensor grad, torch::Tensor boxes, double scale, int64_t output, int64_t batch,
                       int64_t channels, int64_t height, int64_t width) {
  grad = grad.contiguous();
  boxes = boxes.to(grad.scalar_type()).contiguous();
  auto grad_features = torch::zeros({batch, channels, height, width}, grad.options());
  const int64_t points = output + 1;
  auto grid_grad = torch::zeros({batch, channels, points, points}, grad.options());
  const int64_t total = boxes.size(0) * channels * points * points;
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "emulated_backward", [&] {
    launch(3, 64, [&] {
      backward_samples_kernel<scalar_t>(grad.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(),
                                        grad_features.data_ptr<scalar_t>(), grid_grad.data_ptr<scalar_t>(), total,
                                        batch, channels, height, width, output, static_cast<scalar_t>(scale));
    });
    launch(2, 16, [&] {
      backward_grid_kernel<scalar_t>(grid_grad.data_ptr<scalar_t>(), grad_features.data_ptr<scalar_t>(),
                                     grid_grad.numel(), height, width, output);
    });
  });
  return grad_features;
}

int64_t check_boxes(torch::Tensor boxes, int64_t batch) {
  boxes = boxes.contiguous();
  int flags = -1;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "emulated_check", [&] {
    launch(1, 1, [&] { check_boxes_kernel<scalar_t>(boxes.data_ptr<scalar_t>(), boxes.size(0), batch, &flags); });
  });
  return flags;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("check_boxes", &check_boxes);
}
